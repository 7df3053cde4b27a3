"""Dataset loaders for the original's formats and ours, lazy media decoding, and the training augmentation option."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from _videollama_training import make_dataset, tiny_processor, write_clip
from torch.utils.data import DataLoader

from transformers_videollama import (
    DATA_FORMATS,
    VideoLlamaDataCollator,
    VideoLlamaVideoProcessor,
    load_training_data,
)
from transformers_videollama.video_processing_videollama import headtail_frame_indices


COLUMNS = ["id", "media", "media_type", "audio", "conversations", "caption"]


def test_webvid_csv(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "part0.csv").write_text(
        'videoid,name,page_dir\n1066674784,"Aerial shot: a RIVER, at dawn!",006401_006450\n'
    )
    (tmp_path / "ann" / "part1.csv").write_text("videoid,name,page_dir\n7,Dog runs.,000001_000050\n")
    data = load_training_data("webvid", tmp_path / "ann", tmp_path / "videos")  # a folder of CSVs, as the original
    assert data.column_names == COLUMNS and len(data) == 2
    assert data[0]["media"] == str(tmp_path / "videos" / "006401_006450" / "1066674784.mp4")
    assert data[0]["caption"] == "aerial shot a river, at dawn"  # BLIP caption cleaning
    assert data[0]["conversations"] == [] and data[0]["media_type"] == "video"
    (tmp_path / "bad.csv").write_text("id,text\n1,x\n")
    with pytest.raises(ValueError, match=r"bad.csv: WebVid CSV lacks column\(s\) \['name', 'page_dir', 'videoid'\]"):
        load_training_data("webvid", tmp_path / "bad.csv", tmp_path)


def test_image_caption_json(tmp_path):
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": [{"image_id": "2", "caption": "A Dog."}]}))
    data = load_training_data("image_caption", tmp_path / "filter_cap.json", tmp_path / "image")
    assert data[0]["media"] == str(tmp_path / "image" / "2.jpg") and data[0]["caption"] == "A Dog."
    (tmp_path / "laion.json").write_text(json.dumps([{"image": "a/b.png", "caption": "x"}, {"image": "c.png"}]))
    with pytest.raises(ValueError, match=r"laion.json entry 1: missing field\(s\) \['caption'\]"):
        load_training_data("image_caption", tmp_path / "laion.json", tmp_path)


def test_llava_and_videochat_instruct(tmp_path):
    PIL.Image.new("RGB", (4, 4)).save(tmp_path / "COCO_train2014_000001.jpg")
    llava = [
        {
            "id": "1",
            "image": "000001.jpg",
            "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}],
        }
    ]
    (tmp_path / "llava.json").write_text(json.dumps(llava))
    data = load_training_data("llava", tmp_path / "llava.json", tmp_path)
    assert data[0]["media"] == str(tmp_path / "COCO_train2014_000001.jpg")  # the original's COCO prefix, detected
    # every turn has the same columns; `priors` (answer priors, see the jsonl format) is empty unless given
    assert data[0]["conversations"][0] == {"from": "human", "value": "<image>\nWhat is it?", "priors": []}

    videochat = [{"video": "v/1.mp4", "QA": [{"q": "Q1", "a": "A1"}, {"q": "Q2", "a": "A2"}]}]
    (tmp_path / "vc.json").write_text(json.dumps(videochat))
    data = load_training_data("videochat", tmp_path / "vc.json", tmp_path / "webvid")
    assert data[0]["media"] == str(tmp_path / "webvid" / "v" / "1.mp4")
    assert [t["from"] for t in data[0]["conversations"]] == ["human", "gpt", "human", "gpt"]
    (tmp_path / "vc_bad.json").write_text(json.dumps([{"video": "x.mp4", "QA": [{"q": "only a question"}]}]))
    with pytest.raises(ValueError, match="vc_bad.json entry 0: 'QA' must be"):
        load_training_data("videochat", tmp_path / "vc_bad.json", tmp_path)


def test_jsonl_format(tmp_path):
    lines = [
        {"video": "a.mp4", "conversations": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
        {
            "video": "a.mp4",
            "audio": True,
            "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
        },
        {"image": "b.jpg", "caption": "a caption"},
        {"conversations": [{"from": "human", "value": "text only"}, {"from": "gpt", "value": "ok"}]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    data = load_training_data("jsonl", path)
    assert len(data) == 4 and set(DATA_FORMATS) == {"webvid", "image_caption", "llava", "videochat", "jsonl"}
    assert data[0]["media"] == str(tmp_path / "a.mp4") and data[0]["conversations"][1] == {
        "from": "gpt",
        "value": "A",
        "priors": [],
    }
    assert data[1]["audio"] == str(tmp_path / "a.mp4")  # "audio": true is the video's own sound track
    assert data[2]["media_type"] == "image" and data[2]["caption"] == "a caption" and data[2]["conversations"] == []
    assert data[3]["media"] == "" and data[3]["caption"] is None

    for bad, message in [
        ('{"video": "a.mp4"}', r"bad.jsonl:2: a record needs exactly one of 'conversations' or 'caption'"),
        ('{"video": "a.mp4", "conversations": [{"from": "gpt", "value": "A"}]}', r"bad.jsonl:2: turns must alternate"),
        ('{"image": "b.jpg", "audio": true, "caption": "c"}', r"bad.jsonl:2: 'audio': true means the video's own"),
        ("{not json", r"bad.jsonl:2: not valid JSON"),
    ]:
        (tmp_path / "bad.jsonl").write_text(json.dumps(lines[0]) + "\n" + bad + "\n")
        with pytest.raises(ValueError, match=message):
            load_training_data("jsonl", tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_training_data("jsonl", tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="Unknown data format 'csv'"):
        load_training_data("csv", path)


def test_lazy_decoding_in_dataloader_workers(tmp_path):
    """Datasets hold paths; the collator decodes real mp4/jpg files with PyAV, also inside DataLoader workers."""
    data = load_training_data("jsonl", make_dataset(tmp_path, num_records=3))
    loader = DataLoader(data, batch_size=2, collate_fn=VideoLlamaDataCollator(tiny_processor()), num_workers=1)
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2]
    assert batches[0]["pixel_values_videos"].shape == (2, 4, 3, 28, 28)
    # the clips are flat colours: red, green (after CLIP normalisation the red channel dominates the first)
    first = batches[0]["pixel_values_videos"][:, 0].mean(dim=(2, 3))
    assert first[0, 0] > first[0, 1] and first[1, 1] > first[1, 0]


def test_training_augmentation_is_a_processor_option(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", (10, 120, 240))
    plain = VideoLlamaVideoProcessor(num_frames=4, size={"height": 28, "width": 28})
    assert plain.do_train_augmentation is False  # off by default: inference is untouched
    reference = plain.load(str(path)).frames
    assert np.array_equal(plain.load(str(path)).frames, reference)

    augmenting = VideoLlamaVideoProcessor(num_frames=4, size={"height": 28, "width": 28}, do_train_augmentation=True)
    torch.manual_seed(0)
    crops = [augmenting.load(str(path)).frames for _ in range(3)]
    assert all(c.shape == reference.shape and c.dtype == np.uint8 for c in crops)
    assert any(not np.array_equal(c, reference) for c in crops)  # random resized crop changes the frames
    assert augmenting.load(str(path), augment=False).frames.tobytes() == reference.tobytes()
    # the setting round-trips through save/load like any processor option
    augmenting.save_pretrained(tmp_path / "vp")
    assert VideoLlamaVideoProcessor.from_pretrained(tmp_path / "vp").do_train_augmentation is True

    image = PIL.Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None], (48, 1, 3)))
    torch.manual_seed(1)
    cropped = augmenting.load(image).frames
    assert cropped.shape == (1, 28, 28, 3) and not np.array_equal(cropped, plain.load(image).frames)


def test_headtail_sampling():
    torch.manual_seed(0)
    for _ in range(20):
        indices = headtail_frame_indices(17, 8)
        assert indices == sorted(indices) and len(set(indices)) == 8
        assert all(i < 8 for i in indices[:4]) and all(8 <= i < 17 for i in indices[4:])
    with pytest.raises(ValueError, match="needs at least 4 frames in each half of the video, but it has 6 frames"):
        headtail_frame_indices(6, 8)
    with pytest.raises(ValueError, match="frame_sampling"):
        VideoLlamaVideoProcessor(frame_sampling="random")
