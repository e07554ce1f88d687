"""What a Ray worker of ours prints: the setup hook's filters (pipeline.infra.ray_runtime)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_an_actor_stopped_inside_a_weakref_callback_prints_no_traceback_but_other_errors_still_show() -> None:
    """Ray stops a finished trial with SIGTERM, whose handler raises SystemExit; inside a weakref callback Python
    printed it as "Exception ignored in … SystemExit: 1" with a traceback (seen in the quickstart's log). The
    worker's unraisable hook drops that one only."""
    code = textwrap.dedent(
        """
        import sys, weakref
        from pipeline.infra.ray_runtime import drop_exit_on_stop
        sys.unraisablehook = drop_exit_on_stop(sys.unraisablehook)

        class Thing:
            pass

        def raising(exc):
            def callback(_ref):
                raise exc
            return callback

        for exc in (SystemExit(1), ValueError("still shown")):
            t = Thing()
            r = weakref.ref(t, raising(exc))
            del t
        print("done")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "done"
    assert "SystemExit" not in res.stderr
    assert "ValueError: still shown" in res.stderr and "Exception ignored" in res.stderr
