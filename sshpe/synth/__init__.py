"""The built-in synthetic COCO-format person-keypoint dataset (`sshpe synth`, DESIGN decision 11).

`dataset` writes the files, `scene` composes one image, `figures` draws one person; `generate` is the entry point.
"""

from sshpe.synth.dataset import VAL_ID_OFFSET, generate

__all__ = ["VAL_ID_OFFSET", "generate"]
