# Train the built-in model's diffusion prior on a GPU (see docs/shapes_model.md): a fresh 100k-row shapes cache (world
# seed 5) embedded with the built-in CLIP, a 100-step calibration, then as many steps of batch 256 as fit in T seconds.
# Usage on the device machine: OUT=dir bash benchmarks/gpu_prior.sh   (D=cpu N=2100 T=20 C=10 W=2 for a smoke run)
set -e; export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
D=${D:-cuda}; N=${N:-100000}; T=${T:-140}; C=${C:-100}
python3 -c "from unclip.data.shapes_cache import build_shapes_cache as b; from unclip.encoders.loading import load_clip; from unclip.data.shapes import ShapesWorld; b('/tmp/c', load_clip('shapes', device='$D'), $N, ShapesWorld(seed=5), 64, clip_name='shapes', progress=False, render_workers=${W:-14})"
A="train prior --kind diffusion --cache /tmp/c --batch-size 256 --lr 1e-3 --weight-decay 0.01 --ema-decay 0.999 --device $D --no-progress --no-resume --ckpt-every 0 --eval-every 0"
python3 -m unclip.cli $A -o /tmp/cal --steps $C --warmup-steps 10 --log-every $((C/2)) --final-eval-rows 0 > /tmp/cal.log 2>&1 || { tail -20 /tmp/cal.log; exit 1; }
S=$(python3 -c "import json;r=[json.loads(l) for l in open('/tmp/cal/metrics.jsonl') if 'samples_per_s' in l][-1];print(max(20,int(0.9*$T*r['samples_per_s']/256)))")
echo "steps $S"
python3 -m unclip.cli $A -o /tmp/p --steps $S --warmup-steps 100 --log-every 100 --max-minutes $(python3 -c "print(($T+15)/60)") 2>&1 | tail -8
mkdir -p $OUT/prior; cp /tmp/p/model/* $OUT/prior/; cp /tmp/p/metrics.jsonl $OUT/
