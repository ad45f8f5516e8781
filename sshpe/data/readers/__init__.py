"""Dataset readers, native annotation files -> `Instance`s: `coco` (COCO format; also the `Instance` type), `mpii`
(HRNet's MPII layout, `gt_valid.mat`, `pred.mat`) and `aic` (AI Challenger)."""
