cd /work/main
while ! [ $(wc -l < /tmp/exp/prep.times) -ge 3 ]; do sleep 5; done
date > /tmp/exp/chain.times
.venv/bin/python -m training.train --config training/configs/wbc8_cropnorm.json --packs packs38 --out runs/gen38/cropnorm --device cpu --threads 2 > /tmp/exp/cropnorm.log 2>&1 && \
.venv/bin/python -m training.export --run runs/gen38/cropnorm --out runs/candidates/cropnorm38.safetensors --config training/configs/wbc8_cropnorm.json >> /tmp/exp/cropnorm.log 2>&1
date >> /tmp/exp/chain.times
.venv/bin/python -m training.pseudo_label --teacher src/napari_ddrnet/weights/ddrnet_wbc8_v2.safetensors src/napari_ddrnet/weights/ddrnet_wbc8_v3.safetensors runs/candidates/cropnorm38.safetensors --reviewed --rank wbc5 --out packs30/txl_pseudo4.npz > /tmp/exp/pseudo.log 2>&1
date >> /tmp/exp/chain.times
