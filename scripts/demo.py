"""The offline demo: the shipped reference-model workflow through a real ComfyUI server.

Starts ComfyUI (the main host, .host/ComfyUI-<version>, set up by scripts/setup_env.sh) with this pack in
custom_nodes/, loads example_workflows/dng_reference_demo.json (UI format, as the template browser shows it), converts it
to an API prompt, queues it over HTTP, waits, copies the images it saved (the DNG grid, the plain grid and the
guidance plot) into the output folder, and stops the server. No weights or data are downloaded.

    make demo                       # writes demo_output/
    .venv/bin/python scripts/demo.py --out DIR --seed N
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.comfy_workflow import workflow_to_prompt  # noqa: E402
from devtools.host import HOST  # noqa: E402
from devtools.server import ComfyServer  # noqa: E402

WORKFLOW = REPO / "example_workflows" / "dng_reference_demo.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "demo_output", help="folder for the images (default demo_output/)")
    ap.add_argument("--seed", type=int, default=None, help="override the workflow's seeds")
    ap.add_argument("--workflow", type=Path, default=WORKFLOW, help="UI-format workflow to run")
    args = ap.parse_args(argv)

    workflow = json.loads(args.workflow.read_text())
    print(f"demo: starting ComfyUI {HOST.version} with the pack (workflow {args.workflow.name}) ...", flush=True)
    with ComfyServer(install_pack=True, checkpoint=False) as server:
        print(f"demo: server up at {server.url} in {server.startup_s:.1f} s", flush=True)
        prompt = workflow_to_prompt(workflow, server.object_info())
        if args.seed is not None:
            for node in prompt.values():
                for key in ("seed", "noise_seed"):
                    if key in node["inputs"]:
                        node["inputs"][key] = args.seed
        t0 = time.perf_counter()
        entry = server.run(prompt, timeout=600)
        print(f"demo: workflow finished in {time.perf_counter() - t0:.1f} s", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        written = []
        for node_id, output in sorted(entry["outputs"].items()):
            for image in output.get("images", []):
                if image.get("type") != "output":
                    continue  # previews
                src = server.output_path(image)
                dst = args.out / Path(image["filename"]).name
                shutil.copyfile(src, dst)
                written.append(dst)
    if not written:
        print("demo: the workflow saved no images", file=sys.stderr)
        return 1
    print("demo: wrote")
    for path in written:
        print(f"  {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
