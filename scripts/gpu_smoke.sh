#!/usr/bin/env bash
# GPU smoke test (issue 6): DPO and GRPO in bf16-mixed, single device / DDP / FSDP. See scripts/gpu_smoke.py.
# Runs offline from the repo root without installing lit-align (PYTHONPATH). When `datasets` (or a version
# it needs) is missing and wheels were carried to build/gpu_smoke_wheels (or $GPU_SMOKE_WHEELS), they are
# installed into /tmp/gpu_smoke_site first; only the ones whose installed version does not fit are used.
# Fetch them here (56 MB; the GPU image lacks datasets, dill, multiprocess), then carry build/gpu_smoke_wheels:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d build/gpu_smoke_wheels datasets==5.2.0 dill==0.4.1 \
#     multiprocess==0.70.19 fsspec==2026.9.0 pyarrow==26.0.1
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
WHEELS="${GPU_SMOKE_WHEELS:-build/gpu_smoke_wheels}"
SITE="${GPU_SMOKE_SITE:-/tmp/gpu_smoke_site}"
if [ -d "$WHEELS" ]; then
  need="$("$PY" - "$WHEELS" <<'PYEOF'
import importlib.metadata as md, re, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.version import Version

wheels = {re.split(r"-", w.name)[0].lower().replace("_", "-"): w for w in Path(sys.argv[1]).glob("*.whl")}
def installed(name):
    try:
        return Version(md.version(name))
    except md.PackageNotFoundError:
        return None
need = set()
if "datasets" in wheels:
    wanted = Version(wheels["datasets"].name.split("-")[1])
    if installed("datasets") != wanted:
        need.add("datasets")
    with zipfile.ZipFile(wheels["datasets"]) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [Requirement(l.split(":", 1)[1].strip()) for l in z.read(meta).decode().splitlines()
                if l.startswith("Requires-Dist:")]
    for req in reqs:
        name = req.name.lower().replace("_", "-")
        if req.marker is not None or name not in wheels:
            continue
        have = installed(name)
        if have is None or have not in req.specifier:
            need.add(name)
print(" ".join(str(wheels[n]) for n in sorted(need)))
PYEOF
)"
  if [ -n "$need" ]; then
    echo "gpu_smoke.sh: installing $need into $SITE"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $need
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_smoke.py "$@"
