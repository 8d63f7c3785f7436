"""A clock that moves only when something sleeps on it: the pacers' clock/sleep seam in tests."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert 0 <= seconds < float("inf") and seconds == seconds  # never negative, infinite or NaN
        self.sleeps.append(seconds)
        self.now += seconds
