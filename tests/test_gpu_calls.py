"""benchmarks/gpu_calls.sh with a stand-in for gpu.sh: the device's two calls, on this machine."""

import shutil
import subprocess

from conftest import ROOT

# Writes the model, then goes on scoring past the first call's end, as gpu.sh does on the device.
STAND_IN = """out=$2
echo "training for $1 minutes, SPEED=$SPEED"
echo weights > "$out/model.pth.partial" && mv "$out/model.pth.partial" "$out/model.pth"
echo "Iter(train) [9/9]" > "$out/train.log"
sleep 5
echo "EIR=0.5" > "$out/accuracy.txt"
"""


def call(folder, *args, env):
    return subprocess.run(["bash", str(folder / "gpu_calls.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_the_run_outlives_the_first_call_and_the_second_brings_back_the_rest(tmp_path):
    shutil.copy(ROOT / "benchmarks" / "gpu_calls.sh", tmp_path)
    (tmp_path / "gpu.sh").write_text(STAND_IN)
    env = {"PATH": "/usr/bin:/bin", "GPU_CALLS_DIR": str(tmp_path / "run"), "SPEED": "0"}
    first = call(tmp_path, "start", "2", str(tmp_path / "out1"), "9", env=env)
    assert first.returncode == 0, first.stderr
    assert "training for 9 minutes, SPEED=0" in first.stdout and "still running" in first.stdout
    assert (tmp_path / "out1" / "model.pth").read_text() == "weights\n"
    assert not (tmp_path / "out1" / "accuracy.txt").exists()
    second = call(tmp_path, "wait", "30", str(tmp_path / "out2"), env=env)
    assert "gpu.sh has ended" in second.stdout and "Iter(train) [9/9]" in second.stdout
    assert (tmp_path / "out2" / "accuracy.txt").read_text() == "EIR=0.5\n"
