import pytest

from dartflow.tasks.models.folders import atomic_model_folder, require_model_folder


def test_require_model_folder_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model folder .*nowhere does not exist"):
        require_model_folder(tmp_path / "nowhere")


def test_require_model_folder_names_a_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        require_model_folder(tmp_path)


def test_require_model_folder_rejects_a_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotADirectoryError, match="is a file"):
        require_model_folder(tmp_path / "config.json")


def test_require_model_folder_accepts_a_model(tiny_model_dir):
    assert require_model_folder(str(tiny_model_dir)) == tiny_model_dir


def test_folder_appears_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "nested" / "model"
    with atomic_model_folder(target) as staging:
        (staging / "config.json").write_text("{}")
        assert not target.exists()  # readers never see a half-written folder
        assert staging.parent == target.parent
    assert [p.name for p in target.iterdir()] == ["config.json"]
    assert [p.name for p in target.parent.iterdir()] == ["model"]


def test_failed_block_keeps_the_old_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_model_folder(target, overwrite=True) as staging:
            (staging / "config.json").write_text("new")
            raise RuntimeError("boom")
    assert (target / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_overwrite_replaces_the_whole_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("old")
    with atomic_model_folder(target, overwrite=True) as staging:
        (staging / "config.json").write_text("new")
    assert [p.name for p in target.iterdir()] == ["config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_refuses_a_destination_that_is_a_file(tmp_path):
    (tmp_path / "model").write_text("")
    with pytest.raises(FileExistsError, match="it is a file"):
        with atomic_model_folder(tmp_path / "model", overwrite=True):
            pass


def test_refuses_when_the_destination_fills_up_during_the_build(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_model_folder(target) as staging:
            (staging / "config.json").write_text("mine")
            target.mkdir()
            (target / "config.json").write_text("someone else's")
    assert (target / "config.json").read_text() == "someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
