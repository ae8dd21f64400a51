cd /work/main
while ! [ $(wc -l < /tmp/exp/chain.times) -ge 3 ]; do sleep 10; done
for cfg in long:wbc8_v2_pseudo4_long ref3:wbc8_v2_pseudo4; do
  tag=${cfg%%:*}; conf=${cfg#*:}
  for seed in 0 1; do
    run=runs/p4${tag}_s$seed
    echo "$(date) start $run" >> /tmp/exp/students.times
    .venv/bin/python -m training.train --config training/configs/$conf.json --out $run --packs packs30 --device cpu --threads 2 --set seed=$seed > /tmp/exp/train_${tag}_s$seed.log 2>&1
    .venv/bin/python -m training.recalibrate --run $run --packs packs30 --packs-train pbc_train:0.75 bccd_trainfold:10 txl_pseudo4:5 --out ${run}_recal --val pbc_val bccd_valfold > /tmp/exp/recal_${tag}_s$seed.log 2>&1
  done
done
echo "$(date) done" >> /tmp/exp/students.times
