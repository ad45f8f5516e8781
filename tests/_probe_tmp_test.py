from sshpe.evaluate import build_results, coco_keypoint_eval
from sshpe.schema import COCO17
import test_evaluate as t
from test_evaluate import gt_file
def test_probe(gt_file):
    for n in (0, 3, 12):
        print(n, coco_keypoint_eval(gt_file, build_results(*t._instances(noise_px=n), schema=COCO17)))
