"""Errors a program can end with."""


class ProgramError(Exception):
    """What failed a program, naming the step."""

    def __init__(self, step: str | None, message: str):
        self.step = step
        super().__init__(f"step {step!r}: {message}" if step else message)
