#!/bin/sh
# Paper 004 zoo entries, one training job at a time (2 shared CPU cores): fine-tuned from the
# float zoo models. Run from the repository root; writes src/quantadv/zoo/NAME.{safetensors,json}.
set -e
export OMP_NUM_THREADS=1
Q="nice -n 5 .venv/bin/quantadv train --arch small-cnn --data fashion-mnist --threads 1 --no-progress --seed 0 --device cpu"
$Q --method bc --epochs 1 --lr 0.001 --init fmnist-cnn --out fmnist-cnn-bc
$Q --method mdtanh --epochs 1 --lr 0.001 --init fmnist-cnn --out fmnist-cnn-mdtanh
$Q --method waq --epochs 1 --lr 0.001 --init fmnist-cnn --out fmnist-cnn-waq
# Table 5: adversarially trained binary network (5-step PGD, eps 0.1), first 10,000 training images only
$Q --method bc --adv pgd-linf --eps 0.1 --attack-steps 5 --epochs 1 --lr 0.0005 --train-size 10000 \
   --init fmnist-cnn-at-linf --out fmnist-cnn-bc-at-linf
