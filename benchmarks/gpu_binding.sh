# Issue 19 on a GPU: retrain what depends on a new CLIP (the prior and the decoder, each fine-tuned from the shipped
# stage, which already draws shapes) in one call, and return both in fp16 with their logs.
#   OUT=dir CLIP=path/to/new/clip bash benchmarks/gpu_binding.sh
# A 120k-row cache of ShapesWorld(seed=5, two_object_prob=TWO) embedded with CLIP, then the prior for TP seconds and
# the decoder for TD seconds (batch 512; step counts from a short calibration). Smoke run on a CPU:
#   OUT=/tmp/o CLIP=... D=cpu N=2100 TP=2 TD=2 C=2 W=0 BP=16 BD=4 bash benchmarks/gpu_binding.sh
set -e; export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
D=${D:-cuda}; N=${N:-120000}; TP=${TP:-120}; TD=${TD:-330}; C=${C:-40}; TWO=${TWO:-0.5}; BP=${BP:-256}; BD=${BD:-512}
SHIPPED=src/unclip/assets/shapes
# GRID: side of the decoder's located z_i map grown on the shipped decoder (0: none); its projection at 0.1x the lr
GRID=${GRID:-8}; GRIDARGS=""; [ "$GRID" -gt 0 ] && GRIDARGS="--image-embedding-grid $GRID --lr-scale clip_grid_proj=0.1"
python3 -c "from unclip.data.shapes_cache import build_shapes_cache as b; from unclip.encoders.loading import load_clip; from unclip.data.shapes import ShapesWorld; b('/tmp/c', load_clip('$CLIP', device='$D'), $N, ShapesWorld(seed=5, two_object_prob=$TWO), 64, clip_name='$CLIP', progress=False, render_workers=${W:-14})"
steps() {  # steps of batch $2 that fit $3 seconds, from the calibration run's throughput in $1
  python3 -c "import json;r=[json.loads(l) for l in open('$1/metrics.jsonl') if 'samples_per_s' in l][-1];print(max(20,int(0.9*$3*r['samples_per_s']/$2)))"
}
P="train prior --kind diffusion --cache /tmp/c --batch-size $BP --lr 5e-4 --weight-decay 0.01 --ema-decay 0.999 --device $D --no-progress --no-resume --ckpt-every 0 --eval-every 0 --init-from $SHIPPED/prior"
python3 -m unclip.cli $P -o /tmp/pcal --steps $C --warmup-steps 1 --log-every 1 --final-eval-rows 0 > /tmp/pcal.log 2>&1 || { tail -20 /tmp/pcal.log; exit 1; }
SP=$(steps /tmp/pcal $BP $TP); echo "prior steps $SP"
python3 -m unclip.cli $P -o /tmp/p --steps $SP --warmup-steps 50 --log-every 100 2>&1 | tail -4
R="train decoder --cache /tmp/c --preset shapes --batch-size $BD --lr 1e-3 --ema-decay 0.999 --device $D --no-progress --no-resume --ckpt-every 0 --eval-every 0 --init-from $SHIPPED/decoder $GRIDARGS"
python3 -m unclip.cli $R -o /tmp/dcal --steps $C --warmup-steps 1 --log-every 1 > /tmp/dcal.log 2>&1 || { tail -20 /tmp/dcal.log; exit 1; }
SD=$(steps /tmp/dcal $BD $TD); echo "decoder steps $SD"
python3 -m unclip.cli $R -o /tmp/d --steps $SD --warmup-steps 100 --log-every 200 2>&1 | tail -4
python3 - <<PY
import shutil, pathlib
from safetensors.torch import load_file, save_file
for stage, run in (("prior", "/tmp/p"), ("decoder", "/tmp/d")):
    dst = pathlib.Path("$OUT") / stage
    dst.mkdir(parents=True, exist_ok=True)
    for f in pathlib.Path(run, "model").iterdir():
        if f.name == "model.safetensors":
            sd = load_file(str(f))
            save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in sd.items()}, str(dst / f.name))
        else:
            shutil.copy(f, dst / f.name)
    shutil.copy(pathlib.Path(run, "metrics.jsonl"), dst / "metrics.jsonl")
PY
ls -la $OUT/*
