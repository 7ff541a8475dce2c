"""The model registry, and the models package's import boundary (no data path, no I/O)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from torch import nn

from inat_tune.config import RunConfig
from inat_tune.models import registry
from inat_tune.models.cnn import ScratchCNN


@pytest.fixture
def clean_registry(monkeypatch):
    """A registry holding no custom builder, as in a fresh process; restored afterwards."""
    monkeypatch.setattr(registry, "_BUILDERS", {})


def test_custom_model_registered_first_keeps_the_builtins(clean_registry):
    @registry.register("mine")
    def _mine(cfg: RunConfig, num_classes: int) -> nn.Module:
        return nn.Linear(3, num_classes)

    mine = registry.create_model(RunConfig(model="mine"), num_classes=4)
    assert isinstance(mine, nn.Linear) and mine.out_features == 4
    cnn = registry.create_model(RunConfig(model="scratch_cnn", image_size=32), num_classes=5)
    assert isinstance(cnn, ScratchCNN) and cnn.num_classes == 5
    with pytest.raises(KeyError, match=r"registered: \['finetune', 'mine', 'scratch_cnn'\]"):
        registry.create_model(RunConfig(model="theirs"), num_classes=2)


def test_custom_builder_of_a_builtin_name_wins(clean_registry):
    @registry.register("scratch_cnn")
    def _own(cfg: RunConfig, num_classes: int) -> nn.Module:
        return nn.Identity()

    assert isinstance(registry.create_model(RunConfig(model="scratch_cnn"), 10), nn.Identity)


def test_importing_the_models_imports_nothing_from_the_data_path():
    code = ("import sys, inat_tune.models, inat_tune.models.pretrained, inat_tune.models.cnn, "
            "inat_tune.models.registry, inat_tune.models.counting; "
            "print(sorted(m for m in sys.modules if m.startswith('inat_tune.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = ast.literal_eval(out.stdout)
    assert "inat_tune.models.pretrained" in loaded  # the probe did import the models
    assert [m for m in loaded if m.startswith("inat_tune.data")] == []


def test_pretrained_exports_only_its_own_names():
    # backbones, weights and freezing are imported from their own modules everywhere
    from inat_tune.models import pretrained

    assert set(pretrained.__all__) == {"FinetuneModel", "FrozenPrefix", "build_finetune_model"}
    assert all(hasattr(pretrained, name) for name in pretrained.__all__)
