"""Development tooling shared by the tests, the benchmarks and the demo (never shipped to users' ComfyUI):

    hosts           the pinned ComfyUI hosts and frontends (scripts/host.env) and which one this process tests
    host            the real ComfyUI host in-process: import, load the pack, run prompts through its executor
    server          a real ComfyUI server in a subprocess, over HTTP and websocket
    tiny_checkpoint seeded random-weight SD1.5 / SDXL checkpoints built from the host's own classes
    workflows       the shipped example workflows, generated and checked in the real frontend (headless chromium)
    toy_mixture     the Gaussian-mixture toy with exact denoisers and posteriors (paper Fig. 1)

The test suite imports this package; nothing here imports the test suite.
"""
