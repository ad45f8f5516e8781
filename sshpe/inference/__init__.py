"""Pose inference on people's images (`sshpe predict`, `sshpe.load_model`): `pose_model` (an exported model as a
callable on images and person boxes), `boxes` (person-box files, validated and matched to images) and `overlay`
(drawing poses)."""
