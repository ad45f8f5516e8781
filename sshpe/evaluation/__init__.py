"""Everything about scoring a pose network: `codec` (heatmap encode/decode, pure), `coco_ap` (image mapping,
rescoring, OKS-NMS, results JSON, COCOeval), `pckh` (the PCKh table, pure), `predict` (a network over validation
shards, scored) and `oracle` (ground-truth heatmaps through the same chain)."""
