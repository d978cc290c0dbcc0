"""effnet-train --config=configs/kermany3.py --workdir=runs/kermany3 --config.data.manual_dir=DATA/chest_xray --config.data.external="('DATA/chest_xray_external',)" --config.select_split=external

Three classes from the Kermany folders without a copy of them: NORMAL, BACTERIAL and VIRAL
(data.name='folder', docs/your-own-task.md). The file names carry the pathogen
(person1_bacteria_1.jpeg, person1_virus_6.jpeg), so data.class_from_name maps
PNEUMONIA/*_bacteria_* to BACTERIAL and PNEUMONIA/*_virus_* to VIRAL; the patient rule
keeps each child's films (personN, IM-NNNN) on one side of every split, bacterial and viral
alike. The external set (chest_xray_external, the same file-name convention) holds all three
classes: its macro one-vs-rest AUC picks the checkpoint. The recipe is the shipped one
(configs/pneumonia.py) as a single seed; its balanced class weights now weigh three classes.
Evaluate with effnet-eval --workdir=runs/kermany3 --split=external.
Results: results/recipes.jsonl, record `kermany3-lite0-s0`, beside Kermany et al.'s
bacterial-vs-viral figures (results/published.jsonl, `kermany2018-bacterial-viral`); the
table is rendered in docs/your-own-task.md.
"""

from effnet_jax.train.config import sibling_config

pneumonia = sibling_config(__file__, "pneumonia")

# First match wins; every file of the Kermany folders matches one rule.
CLASS_FROM_NAME = (
    ("NORMAL/*", "NORMAL"),
    ("PNEUMONIA/*_bacteria_*", "BACTERIAL"),
    ("PNEUMONIA/*_virus_*", "VIRAL"),
)
# personN (pneumonia) or [NORMAL2-]IM-NNNN (normal) at the start of a file's name.
PATIENT = r"^(?P<patient>person\d+|(?:[A-Za-z0-9]+-)?IM-\d+)"


def get_config():
    """The shipped recipe (one seed) on BACTERIAL / NORMAL / VIRAL, chosen by external macro AUC."""
    c = pneumonia.get_config()
    c.data.name = "folder"
    c.data.class_from_name = CLASS_FROM_NAME
    c.data.patient_id_pattern = PATIENT
    c.soup_seeds = 1
    c.soup_combine = "weights"
    # The shipped exclusion list judged labels as NORMAL vs PNEUMONIA; it was not drawn for
    # three classes and this recipe's record trained on every image.
    c.data.exclude_list = None
    return c
