#!/bin/bash
# Before and after a change: the rows of `xtask bench table` from two release builds of
# xtask, rounds interleaved (before, after, before, ...); prints "row side median-seconds".
# usage: xtask/bench/before_after.sh BEFORE_XTASK AFTER_XTASK [ROUNDS] [ROW ...]
set -eu
before=$1 after=$2 rounds=${3:-3}
shift $(($# < 3 ? $# : 3))
rows=${*:-vgg16:forward resnet50:forward vgg16:explain resnet50:explain vgg16:train resnet50:train vgg16:ad-ic resnet50:ad-ic}
for row in $rows; do
  m=${row%%:*}; w=${row##*:}
  for i in $(seq $rounds); do
    for side in before after; do
      bin=$before; [ $side = after ] && bin=$after
      t=$(RAYON_NUM_THREADS=2 $bin bench table --runs 3 --model $m --work $w | awk 'NR>1 && NF>=3 {print $(NF-1)}' | tail -1)
      echo "$row $side $t"
    done
  done
done
