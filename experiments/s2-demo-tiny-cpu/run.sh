#!/usr/bin/env bash
# The recorded run of `geotune benchmark` in this folder: Clay v1.5 vs Prithvi-EO 2.0 300M vs
# ResNet-18 at tiny sizes from random weights, on CPU, on the demo's real Sentinel-2 L1C sample
# with the demo's spectral-rule labels. Run from the repository root:
#   bash experiments/s2-demo-tiny-cpu/run.sh
# GEOTUNE_HOME (default ~/.geotune) holds the dataset and the MLflow runs the results point at.
set -euo pipefail
GEOTUNE=${GEOTUNE:-.venv/bin/geotune}
PYTHON=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d)
IMAGE=$($PYTHON -c "from trainer.demo import sample_image; print(sample_image())")

# 1. labels derived from the real scene by the demo's documented rule (datamodules/demo_labels.py)
$PYTHON -m datamodules.demo_labels "$IMAGE" "$WORK/labels.geojson"
# 2. the dataset, as the demo makes it (spatial blocks of 128 px)
$GEOTUNE data delete s2_demo_bench 2>/dev/null || true
$GEOTUNE data add --name s2_demo_bench --image "$IMAGE" --labels "$WORK/labels.geojson" \
    --class-column class_name --sensor sentinel-2-l1c --block-size 128
# 3. the grid: 3 backbones x 3 label budgets x 3 seeds, the same 10 epochs for every run
$GEOTUNE benchmark data.dataset=s2_demo_bench name=s2-demo-tiny-cpu \
    'backbones=[resnet18,prithvi_eo_v2_300,clay_v1_5]' backbone.size=tiny backbone.weights=random \
    'budgets=[20,50,all]' 'seeds=[0,1,2]' trainer.max_epochs=10 \
    data.patch_size=64 data.batch_size=16 data.chips_per_epoch=128 data.num_workers=0 \
    task.optimizer.lr=2e-3
