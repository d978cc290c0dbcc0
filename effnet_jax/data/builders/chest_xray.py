"""TFDS builder for the Kermany chest X-ray images (the "chest_xray" folder or its zip)."""

import logging

import tensorflow_datasets as tfds

from effnet_jax.data import exclusions, imaging, kermany
from effnet_jax.data.builders import base
from effnet_jax.labels import CLASS_NAMES
from effnet_jax.output_files import printable, printable_line
from effnet_jax.progress import Progress

log = logging.getLogger("effnet_jax.data")

ON_BAD_IMAGE = ("error", "skip")

_DESCRIPTION = """\
Pediatric chest X-rays (Kermany et al., Cell 2018; Mendeley Data doi:10.17632/rscbjbr9sj.2,
CC BY 4.0), NORMAL vs PNEUMONIA. Images are stored grayscale, downscaled once so the
shorter side is at most `max_size` pixels (aspect kept), as JPEG.
"""

_MANUAL = """\
Point data.manual_dir at the chest_xray folder ({train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg),
a folder above it, or its zip (Kaggle chest-xray-pneumonia.zip, Mendeley ChestXRay2017.zip).
"""


class ChestXrayConfig(tfds.core.BuilderConfig):
    """Storage size, bad-image policy and exclusion list (all change what is written, so all
    name the config: a list with other files gives another prepared data set).

    ``follow_links`` (data.follow_links) reads links to files wherever they point; it does not
    name the config: a link it reads changes the source fingerprint, which is checked instead.
    """

    def __init__(
        self,
        *,
        max_size: int = 512,
        on_bad_image: str = "error",
        exclude_list: str | None = None,
        follow_links: bool = False,
        **kwargs,
    ):
        if on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"data.on_bad_image={on_bad_image!r}: expected one of {ON_BAD_IMAGE}")
        if not 8 <= int(max_size) <= 16384:  # the bounds of config.data.max_size and model.json's input.max_size
            raise ValueError(f"data.max_size={max_size}: expected an image side from 8 to 16384 pixels")
        # {file key 'split/CLASS/name': reason}, read now so its content (not its path) names
        # the config: editing the list and preparing again never reuses stale records.
        excluded = exclusions.read(exclude_list) if exclude_list else {}
        name = (
            f"max{int(max_size)}"
            + ("_skipbad" if on_bad_image == "skip" else "")
            + (f"_excl{exclusions.fingerprint(excluded)}" if excluded else "")
        )
        super().__init__(
            name=name,
            description=f"shorter side <= {max_size}, bad images: {on_bad_image}, excluded files: {len(excluded)}",
            **kwargs,
        )
        self.max_size = int(max_size)
        self.on_bad_image = on_bad_image
        self.follow_links = bool(follow_links)
        self.exclude_list = str(exclude_list) if exclude_list else None
        self.excluded = excluded


class ChestXray(base.Builder):
    """Kermany chest X-rays: image, label, pathogen, patient id and file name per example."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
    BUILDER_CONFIGS = [ChestXrayConfig()]

    def __init__(self, *, raw_path=None, **kwargs):
        # raw_path may be a zip file, which TFDS's manual_dir (a folder) cannot express.
        self._raw_path = raw_path
        super().__init__(**kwargs)

    # What a builder of another folder layout (builders/folder.py) changes: its classes, how
    # its files are listed, and the fields each example carries beside image and label.
    def _class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def _scan(self, raw):
        return kermany.scan(raw, follow_links=self.builder_config.follow_links)

    def _extra_features(self) -> dict:
        return {"pathogen": tfds.features.ClassLabel(names=list(kermany.PATHOGENS))}

    def _extra_fields(self, file_name: str, cls: str) -> dict:
        patient, pathogen = kermany.parse_name(file_name, cls)
        return {"pathogen": pathogen, "patient_id": patient}

    def _about(self) -> dict:
        return {
            "description": _DESCRIPTION,
            "homepage": "https://data.mendeley.com/datasets/rscbjbr9sj/2",
            "citation": "Kermany et al., Cell 172(5):1122-1131, 2018.",
        }

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            **self._about(),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 1), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=list(self._class_names())),
                    **self._extra_features(),
                    "patient_id": tfds.features.Text(),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
            # Records in generation order (sorted paths / npz order), so record i is easy to trace.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        raw = self._raw_path if self._raw_path is not None else dl_manager.manual_dir
        layout = self._scan(raw)
        meta = self.info.metadata
        # The fingerprint lets a later run tell that data.manual_dir now holds other files.
        meta.update(
            {
                "source": layout.source,
                "source_fingerprint": layout.fingerprint(),
                "source_num_files": sum(len(v) for v in layout.files.values()),
                "max_size": self.builder_config.max_size,
                "on_bad_image": self.builder_config.on_bad_image,
                "follow_links": self.builder_config.follow_links,
                "ignored": list(layout.ignored),
                "skipped": [],
                "num_skipped": 0,
            }
        )
        meta.update(self._exclusion_metadata(layout))
        self._report(layout.problems, meta)
        self._layout = layout
        return {split: self._generate_examples(layout, split) for split in layout.files}

    def _exclusion_metadata(self, layout) -> dict:
        """Counts before exclusion, what the list removes, and list entries matching no file."""
        excluded = self.builder_config.excluded
        before, present = {}, set()
        for split, entries in layout.files.items():
            per = before.setdefault(split, {c: 0 for c in self._class_names()})
            for cls, rel in entries:
                per[cls] += 1
                present.add(exclusions.file_key(rel))
        missing = sorted(set(excluded) - present)
        if missing:
            # A list written for another copy of the data: say so, but the files it does
            # name are still left out.
            log.warning(
                "%s: %d exclusion-list entries match no file here, e.g. %s",
                self.builder_config.exclude_list,
                len(missing),
                missing[:3],
            )
        return {
            "exclude_list": self.builder_config.exclude_list,
            "excluded": sorted(f"{k}: {r}" for k, r in excluded.items() if k in present),
            "num_excluded": len(set(excluded) & present),
            "exclusions_not_found": missing,
            "counts_before_exclusion": before,
            "counts": {},
        }  # per split after exclusion and skipping, filled as splits are written

    def _report(self, problems, meta):
        """Raise on bad input (on_bad_image='error') or record it as skipped."""
        if not problems:
            return
        # Names that are not UTF-8, or hold a newline or an escape code: printed and stored escaped, one line each.
        problems = [printable_line(p) for p in problems]
        if self.builder_config.on_bad_image == "error":
            listing = "\n  ".join(problems)
            raise imaging.BadImageError(
                f"{len(problems)} bad input file(s) or folder(s) (set data.on_bad_image=skip to "
                f"skip and list them):\n  {listing}"
            )
        meta["skipped"] = meta["skipped"] + list(problems)
        meta["num_skipped"] = len(meta["skipped"])

    def _generate_examples(self, layout, split):
        written, bad = 0, []
        kept = {c: 0 for c in self._class_names()}
        excluded = self.builder_config.excluded
        files = layout.files[split]
        for cls, rel in Progress(len(files), f"prepare {self.name} {split}", unit="img", logger=log).wrap(files):
            if exclusions.file_key(rel) in excluded:
                continue  # before decoding: an excluded unreadable file is not a bad-image error
            shown = f"{layout.source}:{rel}" if layout.zip_path else f"{layout.source}/{rel}"
            try:
                data, _ = imaging.load_for_storage(layout.read(rel), shown, self.builder_config.max_size)
            except imaging.BadImageError as e:
                bad.append(str(e))  # keep going: one run reports every bad file of the split
                continue
            # A name that is not UTF-8 (its bytes held as surrogates) cannot be stored as text: it is
            # stored with backslash escapes, as every output writes it; the key keeps its exact bytes.
            file_name = printable(rel.rsplit("/", 1)[-1])
            written += 1
            kept[cls] += 1
            key = rel.encode("utf-8", "surrogateescape")
            yield key, {"image": data, "label": cls, **self._extra_fields(file_name, cls), "file_name": file_name}
        # With on_bad_image='error' this raises, and TFDS discards the partial output.
        self._report(bad, self.info.metadata)
        self.info.metadata["counts"] = {**self.info.metadata["counts"], split: kept}
        if not written:
            raise imaging.BadImageError(
                f"{layout.source}: split {split!r} has no usable image left after skipping bad and excluded files"
            )
