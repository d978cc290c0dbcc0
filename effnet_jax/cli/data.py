"""effnet-data: look at a chest X-ray set before training, write what to leave out, prepare it.

    effnet-data report  --data_dir=../shared/data/chest_xray [--out=/tmp/data_report]
    effnet-data clean   --data_dir=../shared/data/chest_xray [--out=/tmp/data_clean]
    effnet-data rejected --data_dir=../shared/data/chest_xray --reports=EVAL_DIR,EVAL_DIR \
        [--max_prob=0.1] [--out=/tmp/data_rejected]
    effnet-data prepare --name=chest_xray --manual_dir=../shared/data/chest_xray \
        [--data_dir=~/tensorflow_datasets] [--max_size=512] [--on_bad_image=error|skip] \
        [--exclude_list=/tmp/data_clean/exclusions.json] [--follow_links]

report/clean: --data_dir is the raw chest_xray folder (or a parent, or its zip), or a TFDS
data dir holding a prepared chest_xray set. `report` writes report.json and PNG figures;
`clean` writes exclusions.json/.csv (file + reason) and cleaning.json. Nothing in
--data_dir is touched: prepare with data.exclude_list=<out>/exclusions.json to leave the
files out. rejected: lists the training images to which every run scored in --reports
(effnet-eval --split=train --out_dir=EVAL_DIR) gives its label a probability below
--max_prob, suspected label noise (exclusions.json/.csv). prepare: builds the TFDS data set once (array_record) from --manual_dir into
the TFDS data dir --data_dir (default ~/tensorflow_datasets). report/clean/prepare read a link
to a file only when it leads inside the folder, unless --follow_links (data.follow_links).
"""

import json
import os
import sys
from pathlib import Path

from absl import app, flags

from effnet_jax.cli.command import exit_with_help_if_asked
from effnet_jax.cli.errors import one_line
from effnet_jax.cli.logs import show_our_logs
from effnet_jax.data.eda import cleaning, hashing
from effnet_jax.output_files import inside_problem, write_text

# The commands' own modules (matplotlib, scikit-learn, TFDS) load when a command runs, so --help is quick.

COMMANDS = ("report", "clean", "rejected", "prepare")
DEFAULT_OUT = {"report": "data_report", "clean": "data_clean", "rejected": "data_rejected"}
LEAKAGE_EXIT = 3  # `clean --fail_on_leakage` exits with this when train/val overlaps test


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Defines effnet-data's flags on ``fv`` (once)."""

    def define(kind, name, *args, **kwargs):
        if name not in fv:
            kind(name, *args, flag_values=fv, **kwargs)

    t = cleaning.Thresholds()
    define(
        flags.DEFINE_string,
        "data_dir",
        None,
        "report/clean: raw chest_xray folder / parent / zip, or a TFDS dir with it prepared; "
        "prepare: the TFDS data dir to write (default ~/tensorflow_datasets)",
    )
    define(
        flags.DEFINE_string,
        "out",
        None,
        "report/clean/rejected: output folder (default ./data_report, ./data_clean, ./data_rejected)",
    )
    define(flags.DEFINE_list, "reports", [], "rejected: effnet-eval --split=train output folders, comma-separated")
    define(flags.DEFINE_float, "max_prob", 0.1, "rejected: listed when every run gives the label less than this")
    define(flags.DEFINE_bool, "no_progress", False, "report/clean: no progress bar")
    define(flags.DEFINE_integer, "near_bits", t.near_bits, f"near duplicate: pHash bits apart, of {hashing.PHASH_BITS}")
    define(flags.DEFINE_float, "min_std", t.min_std, "near-constant below this grayscale std")
    define(flags.DEFINE_integer, "min_side", t.min_side, "too small below (px)")
    define(flags.DEFINE_integer, "max_side", t.max_side, "too large above (px)")
    define(flags.DEFINE_float, "max_aspect", t.max_aspect, "extreme aspect above this longer/shorter side ratio")
    define(
        flags.DEFINE_enum,
        "patient_leakage",
        t.patient_leakage,
        list(cleaning.PATIENT_LEAKAGE),
        "exclude train/val images of patients also in test, or only report them",
    )
    define(
        flags.DEFINE_string,
        "exclude_list",
        None,
        "report: also count what remains after this exclusion list; prepare: leave its files out (chest_xray)",
    )
    define(flags.DEFINE_integer, "samples", 8, "report: sample images per class in the grid (1 to 64)")
    define(
        flags.DEFINE_bool,
        "fail_on_leakage",
        False,
        f"clean: exit with status {LEAKAGE_EXIT} when train/val overlaps test",
    )
    define(flags.DEFINE_enum, "name", "chest_xray", ["chest_xray", "pneumonia_mnist"], "prepare: data set")
    define(flags.DEFINE_string, "manual_dir", None, "prepare: raw folder or zip (chest_xray), npz folder (mnist)")
    define(
        flags.DEFINE_integer, "max_size", 512, "prepare: chest_xray images stored with the shorter side at most this"
    )
    define(flags.DEFINE_enum, "on_bad_image", "error", ["error", "skip"], "prepare: bad input policy")
    define(flags.DEFINE_integer, "mnist_size", 224, "prepare: pneumonia_mnist size: 28, 64, 128 or 224")
    define(
        flags.DEFINE_bool,
        "follow_links",
        False,
        "report/clean/prepare: read links to files wherever they point (default: only links that stay "
        "inside the folder; data.follow_links)",
    )


# The sample grid is one matplotlib figure with a column per sample: --samples=5000 on the full data
# set would draw thousands of axes into an image hundreds of thousands of pixels wide.
MAX_SAMPLES = 64


def _thresholds(args) -> cleaning.Thresholds:
    return cleaning.Thresholds(
        near_bits=args.near_bits,
        min_std=args.min_std,
        min_side=args.min_side,
        max_side=args.max_side,
        max_aspect=args.max_aspect,
        patient_leakage=args.patient_leakage,
    )


def _refuse_out_inside(out: Path, data: str) -> None:
    """A ValueError when ``out`` lies in ``--data_dir``, which these commands only read.

    Figures written into a class folder would become training images, lists part of the data.
    """
    problem = inside_problem(str(out), str(Path(data).expanduser()), "--out", "--data_dir, which is only read")
    if problem:
        raise ValueError(problem)


def report(args) -> dict:
    """Run `effnet-data report`; returns the report dict (also written as report.json)."""
    from effnet_jax.data import exclusions
    from effnet_jax.data.eda import figures, scan
    from effnet_jax.data.eda import report as report_lib

    th = _thresholds(args)  # validate flags before a long scan
    if not 1 <= args.samples <= MAX_SAMPLES:  # the grid is one figure, --samples columns wide
        raise ValueError(f"--samples={args.samples}: expected 1 to {MAX_SAMPLES} sample images per class")
    out = Path(args.out or DEFAULT_OUT["report"])
    _refuse_out_inside(out, args.data_dir)
    listed = exclusions.read(args.exclude_list) if args.exclude_list else None
    inv = scan.scan_any(
        args.data_dir, samples_per_class=args.samples, progress=not args.no_progress, follow_links=args.follow_links
    )
    rep = report_lib.build(inv, cleaning.find(inv, th), listed)
    out.mkdir(parents=True, exist_ok=True)
    rep["figures"] = figures.draw_all(inv, rep, out)
    write_text(out / "report.json", json.dumps(rep, indent=1) + "\n")
    print(report_lib.summary(rep))
    print(f"effnet-data report: wrote {out}/report.json and {', '.join(rep['figures'])}")
    return rep


def clean(args) -> dict:
    """Run `effnet-data clean`; returns the findings (also written as cleaning.json)."""
    from effnet_jax.data import exclusions
    from effnet_jax.data.eda import scan

    th = _thresholds(args)
    out = Path(args.out or DEFAULT_OUT["clean"])
    _refuse_out_inside(out, args.data_dir)
    inv = scan.scan_any(args.data_dir, progress=not args.no_progress, follow_links=args.follow_links)
    if inv.kind != "raw":
        print(
            f"effnet-data clean: {inv.source} is a prepared data set; the list is written, but "
            "prepare again from the raw folder with data.exclude_list to apply it",
            file=sys.stderr,
        )
    found = cleaning.find(inv, th)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "source": inv.source,
        "created_by": "effnet-data clean",
        "thresholds": found["thresholds"],
        "counts_before": found["counts_before"],
        "counts_after": found["counts_after"],
    }
    json_path = exclusions.write(out / "exclusions.json", found["excluded"], **meta)
    exclusions.write(out / "exclusions.csv", found["excluded"])
    write_text(out / "cleaning.json", json.dumps({"source": inv.source, **found}, indent=1) + "\n")
    before = sum(sum(v.values()) for v in found["counts_before"].values())
    print(
        f"{inv.source}: {before:,} images, {found['num_excluded']} to exclude"
        + "".join(f"\n  {r}: {n}" for r, n in found["by_reason"].items())
    )
    for split in found["counts_before"]:
        b, a = found["counts_before"][split], found["counts_after"].get(split, {})
        print(f"  {split}: " + ", ".join(f"{c} {b[c]:,} -> {a.get(c, 0):,}" for c in b))
    banner = cleaning.leakage_banner(found)
    if banner:
        print(banner, file=sys.stderr)
    print(
        f"effnet-data clean: wrote {json_path}, {out}/exclusions.csv and {out}/cleaning.json\n"
        f"  apply it when preparing: data.exclude_list={json_path.resolve()}"
    )
    return found


def rejected(args) -> list:
    """Run `effnet-data rejected`; returns the exclusion entries (also written as exclusions.json/.csv)."""
    from effnet_jax.data import exclusions
    from effnet_jax.data.eda import rejected as rejected_lib

    out = Path(args.out or DEFAULT_OUT["rejected"])
    _refuse_out_inside(out, args.data_dir)
    entries, scored = rejected_lib.rejected_by_all(args.reports, args.data_dir, args.max_prob)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"created_by": "effnet-data rejected", "max_prob": args.max_prob, "runs": len(args.reports)}
    json_path = exclusions.write(out / "exclusions.json", entries, **meta)
    exclusions.write(out / "exclusions.csv", entries)
    counts = {c: sum(e["file"].split("/")[1] == c for e in entries) for c in rejected_lib.CLASSES}
    print(
        f"{len(entries)} of {scored:,} training images rejected by all {len(args.reports)} run(s) "
        f"({', '.join(f'{c} {n}' for c, n in counts.items())})\n"
        f"effnet-data rejected: wrote {json_path} and {out}/exclusions.csv\n"
        f"  apply it when preparing: data.exclude_list={json_path.resolve()}"
    )
    return entries


def prepare(args) -> None:
    """Run `effnet-data prepare`: build the TFDS data set once and print its splits."""
    from effnet_jax.data import prepare as prepare_lib

    factory = prepare_lib.BuilderFactory(
        name=args.name,
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
        max_size=args.max_size,
        on_bad_image=args.on_bad_image,
        mnist_size=args.mnist_size,
        exclude_list=args.exclude_list,
        follow_links=args.follow_links,
    )
    builder = prepare_lib.ensure_prepared(factory)
    print(f"prepared {factory.name}/{builder.builder_config.name} in {builder.data_path}")
    for split, info in builder.info.splits.items():
        print(f"  {split}: {info.num_examples} examples")
    meta = builder.info.metadata or {}
    skipped = meta.get("skipped", [])
    if meta.get("num_excluded"):
        print(f"  excluded {meta['num_excluded']} file(s) listed in {meta['exclude_list']}")
    if skipped:
        print(f"  skipped {len(skipped)} bad input(s):\n    " + "\n    ".join(skipped))


def _run(args, positional) -> int:
    """Runs the subcommand ``positional[0]`` with parsed flags ``args``; returns the exit status."""
    if len(positional) != 1 or positional[0] not in COMMANDS:
        print(f"effnet-data: expected one command of {', '.join(COMMANDS)}, got {positional}", file=sys.stderr)
        return 2
    command = positional[0]
    show_our_logs()  # progress lines off a terminal
    try:
        if command == "prepare":
            try:
                prepare(args)
            except Exception as e:  # pylint: disable=broad-except
                known = one_line(e)
                if known is None or os.environ.get("EFFNET_TRACEBACK"):
                    raise
                print(f"effnet-data prepare: {known[1]}", file=sys.stderr)
                return known[0]
            return 0
        if not args.data_dir:
            print(f"effnet-data {command}: --data_dir is required", file=sys.stderr)
            return 2
        if not Path(args.data_dir).expanduser().exists():
            print(
                f"effnet-data: --data_dir {args.data_dir}: does not exist; expected the chest_xray "
                "folder ({train,val,test}/{NORMAL,PNEUMONIA}), a parent of it, its zip, or a TFDS "
                "data dir holding it prepared",
                file=sys.stderr,
            )
            return 2
        out = Path(args.out or DEFAULT_OUT[command])
        if os.path.lexists(out) and not out.is_dir():  # checked before the scan, not found by mkdir after it
            # A link leading nowhere too: mkdir would raise FileExistsError after the whole scan.
            link = f" (a link to {os.path.realpath(out)})" if out.is_symlink() else ""
            print(f"effnet-data {command}: --out={out}: exists and is not a folder{link}", file=sys.stderr)
            return 2
        if command == "report":
            report(args)
            return 0
        if command == "rejected":
            rejected(args)
            return 0
        found = clean(args)
    except (ValueError, FileNotFoundError) as e:  # LayoutError, bad lists: the message names the file
        print(f"effnet-data: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # writing --out: a full disk, no permission
        known = one_line(e)
        if known is None or os.environ.get("EFFNET_TRACEBACK"):
            raise
        print(f"effnet-data {command}: {known[1]}", file=sys.stderr)
        return known[0]
    leaked = found["leakage"]["images"] or found["leakage"]["patients"]
    return LEAKAGE_EXIT if args.fail_on_leakage and leaked else 0


def main(argv) -> int:
    """Parses ``argv`` (command and flags, without the program name) into fresh flags; returns the exit status."""
    fv = flags.FlagValues()
    define_flags(fv)
    try:
        positional = fv(["effnet-data", *argv])[1:]
    except flags.Error as e:
        print(f"effnet-data: bad flag: {e}", file=sys.stderr)
        return 2
    return _run(fv, positional)


def run() -> None:
    """Console-script entry point (effnet-data)."""
    exit_with_help_if_asked(sys.argv, __doc__, define_flags)
    define_flags()
    app.run(lambda argv: sys.exit(_run(flags.FLAGS, argv[1:])))


if __name__ == "__main__":
    run()
