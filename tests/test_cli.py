"""The scripts' shared plumbing (lenet_jax.cli)."""


def test_malloc_arenas_are_capped_unless_the_environment_decides(monkeypatch):
    import ctypes
    import platform

    from lenet_jax import speed

    calls = []

    class FakeLibc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    speed.limit_malloc_arenas()
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert calls == ([(-8, speed.MALLOC_ARENAS)] if glibc else [])
    calls.clear()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the user's setting wins
    speed.limit_malloc_arenas()
    assert calls == []
