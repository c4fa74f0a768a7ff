"""Temporal heads on fight-surveillance (issue 36, item 3): grouped 5-fold
cross-validation by source video of each (features x head), written into the
``fight-heads`` section of docs/benchmarks.md.

    python benchmarks/fight_heads.py catalog [--part noFight]  # runs/fight/catalog*, prints the
                                                 # `modrec embed` command (I3D steps)
    python benchmarks/fight_heads.py frames      # EfficientNet-Lite0 per-frame vectors
                                                 # + soundtrack, cached under runs/fight
    python benchmarks/fight_heads.py evaluate    # the cross-validation and the section

The clips (fight/fi001.mp4 .. noFight/nofi150.mp4, about 2 s each) are cut from 44
YouTube videos (videos.txt names each clip's source): clips of one source share
scene, camera and people, so they stay in one fold (StratifiedGroupKFold), and the
validation part used for early stopping and hyperparameter choice is carved, grouped
the same way, from the training folds only.
"""

from __future__ import annotations

from modrec import threads as _threads  # noqa: F401  first: its OpenMP policy, before torch

# isort: split

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from kit import DOC, ROOT, machine, markdown_table, write_section
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedGroupKFold

from modrec.content.video.heads import HEADS, HeadSettings, grouped_validation, select_head

DATA = Path("/work/shared/data/fight-surveillance")
OUT = ROOT / "runs" / "fight"
# One 32-frame window at the video's own pace (stride 1, as I3D was trained: 25 fps
# consecutive frames), centred in a ~2 s clip of 48-61 frames: it covers 1.1-1.3 s with
# no looping, and I3D keeps one step per 8 frames, so S = 4 steps a clip.
I3D_SPEC = "video:i3d:frames=32:stride=1:clips=1"
FRAMES = 8  # frames a clip for the frame encoder's sequences (the `video` encoder's count)
CLIP_NAME = re.compile(r"^\s*((?:no)?fi\d{3})\s*:")
# "nofi062 - nofi076 : CamNet Dataset": a range of clips from another data set
CLIP_RANGE = re.compile(r"^\s*(no)?fi(\d{3})\s*-\s*(?:no)?fi(\d{3})\s*:")


def clips() -> tuple[list[str], list[Path], np.ndarray, np.ndarray]:
    """Each clip's id, file, label (1 = fight) and group (its source video's number in
    videos.txt). The file ends with ranges of clips taken from other data sets
    ("nofi062 - nofi076 : CamNet Dataset"); two ranges share a clip (nofi076), so
    they are one group: never a clip of one source on both sides of a split."""
    source: dict[str, int] = {}
    group = -1
    for line in (DATA / "videos.txt").read_text().splitlines():
        if line.strip().startswith("http"):
            group += 1
        elif (match := CLIP_NAME.match(line)) is not None:
            source[match.group(1)] = group
        elif (span := CLIP_RANGE.match(line)) is not None:
            prefix = f"{span.group(1) or ''}fi"
            names = [f"{prefix}{n:03d}" for n in range(int(span.group(2)),
                                                       int(span.group(3)) + 1)]
            shared = [source[n] for n in names if n in source]
            if not shared:
                group += 1
            for name in names:
                source[name] = shared[0] if shared else group
    files = sorted((DATA / "fight").glob("fi*.mp4")) + sorted((DATA / "noFight").glob("nofi*.mp4"))
    ids = [f.stem for f in files]
    missing = [i for i in ids if i not in source]
    if missing:
        raise SystemExit(f"videos.txt names no source for {missing[:5]}")
    labels = np.array([0 if i.startswith("nofi") else 1 for i in ids])
    return ids, files, labels, np.array([source[i] for i in ids])


def write_catalog(part: str = "all") -> None:
    """A RecBole-style catalog (one placeholder user; the items carry video, label and
    group) that `modrec embed` reads; absolute paths, hence --allow-outside-paths.
    ``part``: all clips (catalog/, store/), or the noFight ones alone (catalog-noFight/,
    store-noFight/) for a second embed job beside the first: the embed job encodes in
    catalog order, fight clips first, and on this busy machine one niced job did not
    reach the noFight clips in the time there was. `i3d_steps` reads both stores."""
    ids, files, labels, groups = clips()
    keep = [k for k, i in enumerate(ids) if part == "all" or i.startswith("nofi")]
    catalog, store = catalog_and_store(part)
    catalog.parent.mkdir(parents=True, exist_ok=True)
    catalog.write_text("user_id:token\titem_id:token\n" + "".join(f"u\t{ids[k]}\n"
                                                                   for k in keep))
    catalog.with_suffix(".item").write_text(
        "item_id:token\tvideo:token\tlabel:token\tgroup:token\n" + "".join(
            f"{ids[k]}\t{files[k]}\t{'fight' if labels[k] else 'noFight'}\t{groups[k]}\n"
            for k in keep))
    print(f"{len(keep)} clips from {len(set(groups[keep]))} source videos -> {catalog}")
    print(f"nice -n 10 env PYTHONPATH=src python -m modrec embed -d {catalog} --encoder "
          f"{I3D_SPEC} --store {store} --allow-outside-paths")


def catalog_and_store(part: str) -> tuple[Path, Path]:
    suffix = "" if part == "all" else "-noFight"
    return OUT / f"catalog{suffix}" / "fight.inter", OUT / f"store{suffix}"


def frame_features(frames: int = FRAMES) -> None:
    """Per clip: ``frames`` frames at the centres of equal time slices through
    EfficientNet-Lite0 (the ``video`` encoder's image model: (frames, 1280)) and the
    soundtrack through its audio encoder ((128,), zeros without sound), one .npz per
    clip under runs/fight/frames (resumable: a clip done is skipped)."""
    from modrec.content.encoders.audio import AudioEncoder
    from modrec.content.encoders.image import ImageEncoder
    from modrec.content.media import decode_audio, sample_frames

    image, audio = ImageEncoder(), AudioEncoder()
    folder = OUT / f"frames{frames}"
    folder.mkdir(parents=True, exist_ok=True)
    ids, files, _, _ = clips()
    started, done = time.perf_counter(), 0
    order = np.argsort([int(i[-3:]) * 2 + i.startswith("no") for i in ids], kind="stable")
    for clip, path in ((ids[k], files[k]) for k in order):  # fi001, nofi001, fi002, ...
        target = folder / f"{clip}.npz"
        if target.exists():
            continue
        steps = image.encode(sample_frames(path, frames))
        sound = decode_audio(path)
        heard = (audio.encode_waveform(*sound) if sound is not None and sound[0].size
                 else np.zeros(audio.dim, np.float32))
        np.savez(folder / f"{clip}.tmp.npz", steps=steps.astype(np.float32), audio=heard)
        (folder / f"{clip}.tmp.npz").replace(target)
        done += 1
        if done % 20 == 0:
            print(f"{done} clips, {(time.perf_counter() - started) / done:.2f} s a clip",
                  flush=True)


Features = tuple[np.ndarray, np.ndarray, list[str]]  # steps (N, S, D), lengths, clip ids


def i3d_steps() -> Features:
    """The I3D step sequences of every clip encoded so far, from both stores."""
    from modrec.content.store import EmbeddingStore

    name = "video-i3d-frames-32-stride-1-clips-1"
    found: dict[str, np.ndarray] = {}
    for part in ("all", "noFight"):
        _, folder = catalog_and_store(part)
        if not folder.exists():
            continue
        [ids_file] = folder.glob("ids-*.json")
        ids = json.loads(ids_file.read_text())
        steps, lengths = EmbeddingStore(folder, ids[1:]).sequences(name)
        for row in np.flatnonzero(lengths > 0):
            found.setdefault(ids[row], np.asarray(steps[row, :lengths[row]], np.float32))
    return _padded(found)


def frame_steps(audio: bool) -> Features:
    """EfficientNet-Lite0 vectors of the sampled frames (`frame_features`), with the
    soundtrack's vector joined to every step when ``audio``."""
    found = {}
    for file in sorted((OUT / f"frames{FRAMES}").glob("*.npz")):
        if file.name.endswith(".tmp.npz"):
            continue
        with np.load(file) as data:
            steps = data["steps"]
            if audio:
                sound = np.broadcast_to(data["audio"], (len(steps), len(data["audio"])))
                steps = np.concatenate([steps, sound], axis=1)
            found[file.stem] = steps
    return _padded(found)


def _padded(found: dict[str, np.ndarray]) -> Features:
    ids = sorted(found)
    longest = max(len(v) for v in found.values())
    x = np.zeros((len(ids), longest, found[ids[0]].shape[1]), np.float32)
    for row, clip in enumerate(ids):
        x[row, :len(found[clip])] = found[clip]
    return x, np.array([len(found[c]) for c in ids]), ids


def same_clips(features: Features, keep: set[str]) -> Features:
    x, lengths, ids = features
    rows = [k for k, clip in enumerate(ids) if clip in keep]
    longest = int(lengths[rows].max())
    return x[rows, :longest], lengths[rows], [ids[k] for k in rows]


def candidates(head: str) -> list[HeadSettings]:
    """The hyperparameters tried per head; `select_head` keeps the best on validation."""
    return [HeadSettings(head=head, hidden=128, dropout=0.3, lr=lr,  # type: ignore[arg-type]
                         epochs=100, patience=20) for lr in (1e-3, 3e-4)]


def cross_validate(features: Features, head: str, folds: int = 5,
                   seed: int = 0) -> dict[str, Any]:
    """Grouped, stratified ``folds``-fold CV by source video: per fold, the head is
    chosen and early-stopped on a grouped validation part of the training folds, then
    tested once on the held-out fold."""
    x, lengths, ids = features
    _, _, labels, groups = _labels_and_groups(ids)
    predicted = np.full(len(ids), -1)
    accuracy, seconds = [], []
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    for train_rows, test_rows in splitter.split(x, labels, groups):
        started = time.perf_counter()
        train, valid = grouped_validation(labels, groups, train_rows, parts=5, seed=seed)
        best = select_head(x, lengths, labels, train, valid, candidates(head))
        seconds.append(time.perf_counter() - started)
        predicted[test_rows] = best.probabilities(x[test_rows], lengths[test_rows]).argmax(1)
        accuracy.append(float((predicted[test_rows] == labels[test_rows]).mean()))
    fight, no_fight = f1_score(labels, predicted, labels=[1, 0], average=None)
    return {"clips": len(ids), "groups": len(set(groups.tolist())),
            "accuracy": float(np.mean(accuracy)), "std": float(np.std(accuracy)),
            "folds": accuracy, "f1_fight": float(fight), "f1_nofight": float(no_fight),
            "seconds_per_fold": float(np.mean(seconds))}


def _labels_and_groups(ids: list[str]) -> tuple[list[str], list[Path], np.ndarray, np.ndarray]:
    all_ids, files, labels, groups = clips()
    at = {clip: k for k, clip in enumerate(all_ids)}
    rows = [at[c] for c in ids]
    return ids, [files[k] for k in rows], labels[rows], groups[rows]


def with_audio(features: Features) -> Features:
    """``features`` with each clip's soundtrack vector joined to every step (clips
    without a stored soundtrack vector are left out)."""
    x, lengths, ids = features
    sound = {}
    for clip in ids:
        file = OUT / f"frames{FRAMES}" / f"{clip}.npz"
        if file.exists():
            with np.load(file) as data:
                sound[clip] = data["audio"]
    rows = [k for k, clip in enumerate(ids) if clip in sound]
    audio = np.stack([sound[ids[k]] for k in rows])  # (N, A)
    joined = np.concatenate([x[rows], np.broadcast_to(
        audio[:, None], (len(rows), x.shape[1], audio.shape[1]))], axis=2)
    return joined, lengths[rows], [ids[k] for k in rows]


def fused() -> Features:
    """Frame steps with the soundtrack and the clip's mean I3D vector joined to each:
    both networks' views of the clip, the frames' order kept."""
    frames, lengths, ids = frame_steps(True)
    i3d, i3d_lengths, i3d_ids = i3d_steps()
    at = {clip: k for k, clip in enumerate(i3d_ids)}
    rows = [k for k, clip in enumerate(ids) if clip in at]
    other = [at[ids[k]] for k in rows]
    mean = i3d[other].sum(1) / i3d_lengths[other, None]  # (N, 1024)
    joined = np.concatenate([frames[rows], np.broadcast_to(
        mean[:, None], (len(rows), frames.shape[1], mean.shape[1]))], axis=2)
    return joined, lengths[rows], [ids[k] for k in rows]


def i3d_steps_from_maps(folder: Path) -> Features:
    """The same I3D steps (Mixed_5c averaged over space, one per 8 frames) computed from
    the Mixed_5b maps `fight_finetune.py extract` stores for the same window and crop:
    Mixed_5c alone, a few seconds a hundred clips, where embedding again takes minutes."""
    import torch

    from modrec.content.video.i3d import load_i3d

    block = load_i3d().blocks["Mixed_5c"].eval()
    found = {}
    with torch.inference_mode():
        for file in sorted(folder.glob("*.npy")):
            maps = torch.from_numpy(np.load(file).astype(np.float32)).unsqueeze(0)
            found[file.stem] = block(maps).mean(dim=(3, 4))[0].T.numpy()  # (T', 1024)
    if not found:
        sys.exit(f"no Mixed_5b maps in {folder}: run python benchmarks/fight_finetune.py "
                 "extract first")
    return _padded(found)


def reordered(features: Features, how: str, seed: int = 0) -> Features:
    """Each clip's steps in their order ("kept"), reversed, or shuffled by a permutation
    of its own drawn once (the same at training and test)."""
    x, lengths, ids = features
    out = x.copy()
    rng = np.random.default_rng(seed)
    for row, n in enumerate(lengths):
        if how == "reversed":
            out[row, :n] = x[row, :n][::-1]
        elif how == "shuffled":
            out[row, :n] = x[row, :n][rng.permutation(n)]
    return out, lengths, ids


def order_verdict(results: dict[tuple[str, str], dict[str, Any]], temporal: list[str]) -> str:
    """The largest loss from shuffling among the temporal heads, against the folds'
    spread: what the order of the steps is worth to them."""
    if not temporal:
        return ""
    loss = {h: 100 * (results[h, "kept"]["accuracy"] - results[h, "shuffled"]["accuracy"])
            for h in temporal}
    top = max(loss, key=lambda h: loss[h])
    spread = 100 * float(np.mean([results[h, "kept"]["std"] for h in temporal]))
    return (f"Shuffling costs a temporal head at most {loss[top]:+.1f} points ({top}), "
            f"against a spread of {spread:.1f} points between folds: "
            + ("within the spread, so on these 4 steps the heads find no use for order, "
               "and a temporal head cannot gain on mean pooling from it (the believed "
               "cause, not measured: I3D's 3D convolutions have already read the motion "
               "within the window)."
               if loss[top] < spread else "more than the spread: the order carries signal."))


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def order(heads: list[str], maps: Path, threads: int) -> None:
    """Does a temporal head use the order of the I3D steps? The same grouped folds with
    each clip's steps kept, reversed and shuffled: a head that reads order loses accuracy
    when it is destroyed; mean pooling cannot, by construction."""
    from modrec.threads import apply_threads

    apply_threads(threads)
    started = time.perf_counter()
    features = i3d_steps_from_maps(maps)
    made = time.perf_counter() - started
    rows, results = [], {}
    for head in heads:
        for how in ("kept", "reversed", "shuffled"):
            result = cross_validate(reordered(features, how), head)
            results[head, how] = result
            print(head, how, json.dumps(result), flush=True)
        kept = results[head, "kept"]
        rows.append([head, *(f"{100 * results[head, h]['accuracy']:.1f} ± "
                             f"{100 * results[head, h]['std']:.1f}"
                             for h in ("kept", "reversed", "shuffled")),
                     f"{100 * (kept['accuracy'] - results[head, 'shuffled']['accuracy']):+.1f}"])
    x, lengths, _ = features
    lines = [
        "## fight-order: do the temporal heads read the order of I3D's steps?", "",
        f"    python benchmarks/fight_heads.py order --maps {shown(maps)} "
        f"--threads {threads} --heads {' '.join(heads)}", "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end (shared). "
        f"The I3D steps of `{I3D_SPEC}` ({len(lengths)} clips, {int(lengths.max())} steps "
        "a clip: one per 8 of the 32 frames), computed by Mixed_5c from the stored "
        f"Mixed_5b maps of `fight_finetune.py extract` ({made:.0f} s). The folds, "
        "choice of learning rate and early stopping are `evaluate`'s; only the order of "
        "each clip's steps changes, the same at training and test.", "",
        markdown_table(["head", "order kept: accuracy %", "reversed", "shuffled",
                        "kept - shuffled (points)"], rows), "",
        "A head that used the order would lose accuracy when it is shuffled. Mean pooling "
        "is the control (it cannot see order).", "",
        order_verdict(results, [h for h in heads if h != "mean"]),
    ]
    write_section(DOC, "fight-order", "\n".join(lines))


FEATURES = {"i3d": i3d_steps, "fused": fused, "i3d+audio": lambda: with_audio(i3d_steps()),
            "frames": lambda: frame_steps(False), "frames+audio": lambda: frame_steps(True)}


def evaluate(heads: list[str], feature_names: list[str], threads: int) -> None:
    from modrec.threads import apply_threads

    apply_threads(threads)
    loaded = {name: FEATURES[name]() for name in feature_names}
    shared = set.intersection(*(set(ids) for _, _, ids in loaded.values()))
    results = []
    for name, features in loaded.items():
        features = same_clips(features, shared)  # every feature set on the same clips
        for head in heads:
            result = {"features": name, "head": head, **cross_validate(features, head)}
            print(json.dumps(result), flush=True)
            results.append(result)
    write_section(DOC, "fight-heads", report(kept_results(results), threads))


def kept_results(new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``new`` merged into runs/fight/results.json, replacing the rows of the same
    features, head and clip count: runs on different clip sets (all the I3D clips; the
    clips every feature set has) stay side by side in the table."""
    file = OUT / "results.json"
    old = json.loads(file.read_text()) if file.exists() else []
    key = lambda r: (r["features"], r["head"], r["clips"])  # noqa: E731
    fresh = {key(r) for r in new}
    merged = [r for r in old if key(r) not in fresh] + new
    merged.sort(key=lambda r: (-r["clips"], r["features"], HEADS.index(r["head"])))
    file.write_text(json.dumps(merged, indent=1))
    return merged


def report(results: list[dict[str, Any]], threads: int) -> str:
    rows = [[r["features"], r["head"], f"{r['clips']} ({r['groups']})",
             f"{100 * r['accuracy']:.1f} ± {100 * r['std']:.1f}",
             f"{r['f1_fight']:.3f}", f"{r['f1_nofight']:.3f}",
             f"{r['seconds_per_fold']:.1f}"] for r in results]
    best = max(results, key=lambda r: r["accuracy"])
    lines = [
        "## fight-heads: temporal heads on fight-surveillance (issue 36, item 3)", "",
        "    python benchmarks/fight_heads.py catalog   # then the printed modrec embed",
        "    python benchmarks/fight_heads.py frames",
        f"    python benchmarks/fight_heads.py evaluate --threads {threads}", "",
        f"Machine: {machine()}; shared with other developers' jobs (a replay benchmark "
        "with its model service, a niced MicroLens training), so the seconds are a busy "
        "machine's.", "",
        "Grouped, stratified 5-fold cross-validation by source video (videos.txt: 44 "
        "YouTube videos plus the CamNet/Synopsis clips, one group): accuracy is the mean "
        "± standard deviation over the five test folds; per-class F1 over the pooled "
        "out-of-fold predictions; seconds: choosing (learning rate 1e-3 or 3e-4) and "
        "training one head for one fold, early-stopped on a grouped fifth of the "
        "training folds (the test fold is never seen before its one prediction).", "",
        f"I3D: `{I3D_SPEC}` (one 32-frame window at the clip's own pace, S = 4 steps); "
        f"frames: {FRAMES} frames per clip through EfficientNet-Lite0 (S = {FRAMES}); "
        "+audio: the soundtrack's log-mel vector joined to every step; fused: frames+audio "
        "with the clip's mean I3D vector joined to every step. The soundtrack vector is "
        "the `audio` encoder's raw log-mel statistics (RMS about 44, against 0.26 for "
        "I3D steps and 0.49 for frame vectors), joined unscaled: the heads' per-step "
        "LayerNorm is then dominated by the sound, which is why every +audio row falls "
        "below its features alone; scaling each part first (as `classify` L2-normalises "
        "each encoder) is not measured yet.", "",
        markdown_table(["features", "head", "clips (groups)", "accuracy %",
                        "F1 fight", "F1 noFight", "s / fold"], rows), "",
        *_temporal_gains(results), "",
        *_coverage(min(r["clips"] for r in results)),
        f"Best: {best['features']} + {best['head']}, {100 * best['accuracy']:.1f}%. "
        "Published: the data set's paper 72%, public notebooks 89-91% (other splits: "
        "random clip splits, where clips of one source video fall on both sides, "
        "which grouping by source forbids).",
    ]
    return "\n".join(lines)


def _temporal_gains(results: list[dict[str, Any]]) -> list[str]:
    """Per feature set: the best temporal head's mean accuracy minus mean pooling's."""
    lines = []
    for name, clips in dict.fromkeys((r["features"], r["clips"]) for r in results):
        rows = {r["head"]: r for r in results if (r["features"], r["clips"]) == (name, clips)}
        temporal = [r for h, r in rows.items() if h != "mean"]
        if "mean" in rows and temporal:
            top = max(temporal, key=lambda r: r["accuracy"])
            gain = 100 * (top["accuracy"] - rows["mean"]["accuracy"])
            lines.append(f"- {name} ({clips} clips): best temporal head {top['head']} "
                         f"{gain:+.1f} points over mean pooling")
    return lines


def _coverage(count: int) -> list[str]:
    if count >= 300:
        return []
    return [f"Rows on {count} clips: only these had every feature set stored when this ran: "
            "the extraction (niced, on the busy 2-core machine) had not finished in the "
            "session's time. Rerun `frames`, the embed commands and `evaluate` to finish "
            "(each resumes where it stopped).", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["catalog", "frames", "evaluate", "order"])
    parser.add_argument("--maps", type=Path, default=ROOT / "runs" / "fight-finetune" / "maps",
                        help="order: the Mixed_5b maps fight_finetune.py extract stored")
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=FEATURES)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads: batches of 32 short sequences are fastest on "
                        "one (several wait on each other on a shared machine)")
    parser.add_argument("--part", choices=["all", "noFight"], default="all",
                        help="catalog: all clips, or the noFight clips for a second job")
    args = parser.parse_args(argv)
    if args.step == "catalog":
        write_catalog(args.part)
    elif args.step == "frames":
        frame_features()
    elif args.step == "order":
        order(args.heads, args.maps.resolve(), args.threads)
    else:
        evaluate(args.heads, args.features, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
