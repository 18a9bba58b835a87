import subprocess
import sys

from api.settings import REPO_ROOT


def test_serving_modules_do_not_import_torch():
    code = (
        "import sys, api.app, api.cli, api.catalog.service, api.catalog.objects, vision.runtimes.onnx,"
        " vision.runtimes.openvino, vision.detection, vision.preprocess;"
        "api.app.create_app(); bad = [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules];"
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
