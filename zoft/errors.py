"""The one exception type the CLI turns into a clean message and exit code 2."""


class ZoftError(Exception):
    """Bad input from the user: a recipe key, a file, a model or a task.

    `problems` holds one line per problem (dotted key first) so that all of them are
    reported at once; the CLI prints them and exits with code 2.
    """

    def __init__(self, problems: str | list[str], title: str = "invalid recipe"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.title = title
        super().__init__(f"{title}:\n" + "\n".join(f"  - {p}" for p in self.problems))
