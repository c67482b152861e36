"""Regression: a caller with its own SIGTERM handler (the training loop installs one for a graceful
stop) must not deadlock the SIFT-flow worker pool when it shuts down."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_batch_pool_finishes_under_a_custom_sigterm_handler(tmp_path):
    code = textwrap.dedent(f"""
        import signal, numpy as np
        signal.signal(signal.SIGTERM, lambda *a: None)   # like the training loop's graceful stop
        from cyclecorr.siftflow import compute_sift_flow_batch
        rng = np.random.RandomState(0)
        pairs = [(rng.randint(0, 255, (32, 32, 3)).astype(np.uint8),
                  rng.randint(0, 255, (32, 32, 3)).astype(np.uint8)) for _ in range(4)]
        paths = compute_sift_flow_batch(pairs, {str(tmp_path)!r}, workers=2, size=32,
                                        progress=False)
        assert len(paths) == 4 and all(p.exists() for p in paths)
        print("done")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done" in r.stdout
