"""Ground-truth targets sent through decoding, image mapping and COCOeval score near the top: the frames of
shards, views, codec and evaluation agree (a half-pixel or flip bug shows up here as a collapse of AP75)."""

from __future__ import annotations

from conftest import smoke_recipe

from sshpe.evaluation.oracle import oracle_ap


def test_oracle_ap_is_near_perfect(smoke_shards):
    stats = oracle_ap(smoke_recipe(smoke_shards, "data.input_size=[128,128]"))
    assert stats["AP50"] == 1.0
    assert stats["AP75"] > 0.9 and stats["AP"] > 0.75


def test_oracle_ap_detects_a_frame_bug(smoke_shards, monkeypatch):
    import sshpe.evaluation.oracle as oracle

    real = oracle.heatmap_to_image
    monkeypatch.setattr(oracle, "heatmap_to_image", lambda k, *a: real(k + 1.0, *a))  # one heatmap px off
    assert oracle_ap(smoke_recipe(smoke_shards, "data.input_size=[128,128]"))["AP"] < 0.5
