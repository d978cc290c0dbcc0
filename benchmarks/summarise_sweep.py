import json, glob, numpy as np, collections
from sklearn.metrics import roc_auc_score
idx = json.load(open('sweep/eval_index.json'))
y = np.array(idx['external']['labels']); yv = np.array(idx['validation']['labels'])
runs = collections.defaultdict(list)
for d in ('sweep', 'sweep2'):
    for line in open(f'{d}/results.jsonl'):
        r = json.loads(line); p = dict(np.load(f"{d}/probs_{r['recipe']}_s{r['seed']}.npz"))
        runs[r['recipe']].append((d, r, p))
def thr(yy, pp, s=0.95):
    pos = np.sort(pp[yy == 1]); return pos[int(np.floor((1 - s) * len(pos)))]
def at(yy, pp, t):
    pr = pp >= t; return np.mean(pr == yy), np.mean(pr[yy == 1]), np.mean(~pr[yy == 0])
rng = np.random.default_rng(0)
def cv(yy, pp, reps=200):
    # threshold fitted on a random half (stratified), scored on the other half
    accs, specs, senss = [], [], []
    for _ in range(reps):
        m = np.zeros(len(yy), bool)
        for c in (0, 1):
            ii = np.flatnonzero(yy == c); m[rng.choice(ii, len(ii)//2, replace=False)] = True
        t = thr(yy[m], pp[m]); a, se, sp = at(yy[~m], pp[~m], t); accs.append(a); senss.append(se); specs.append(sp)
    return np.mean(accs), np.mean(senss), np.mean(specs)
print(f"{'recipe':18s} n  extAUC(mean±sd)   acc@.5  spec@.5  | thr-on-ext acc/spec | CV-thr acc/sens/spec | valAUC")
rows = []
for name, rs in runs.items():
    aucs = [roc_auc_score(y, p['external']) for _, _, p in rs]
    a5 = [at(y, p['external'], 0.5) for _, _, p in rs]
    ts = [at(y, p['external'], thr(y, p['external'])) for _, _, p in rs]
    cvs = [cv(y, p['external']) for _, _, p in rs]
    vauc = [roc_auc_score(yv, p['validation']) for _, _, p in rs]
    rows.append((np.mean(aucs), name, len(rs), np.std(aucs), np.mean([a[0] for a in a5]), np.mean([a[2] for a in a5]),
      np.mean([t[0] for t in ts]), np.mean([t[2] for t in ts]), *np.mean(cvs, axis=0), np.mean(vauc)))
for r in sorted(rows, reverse=True):
    print(f"{r[1]:18s} {r[2]}  {r[0]:.4f}±{r[3]:.4f}  {r[4]:.3f}  {r[5]:.3f}  | {r[6]:.3f} {r[7]:.3f} | {r[8]:.3f} {r[9]:.3f} {r[10]:.3f} | {r[11]:.4f}")
# ensembles
for name in ('geo_photo', 'geo_photo_ema', 'geo', 'geo_photo_e4', 'geo_photo_erase'):
    ps = [p['external'] for _, _, p in runs[name]]
    for flip in ('', '_flip'):
        pe = np.mean([p['external' + flip] for _, _, p in runs[name]], axis=0)
        print(name + flip, 'ensemble of', len(ps), 'AUC', round(roc_auc_score(y, pe), 4), 'at .5', np.round(at(y, pe, .5), 3), 'thr', round(float(thr(y, pe)),3), np.round(at(y, pe, thr(y, pe)), 3), 'cv', np.round(cv(y, pe), 3))
# thresholds per run for geo_photo
for name in ('geo_photo', 'geo_photo_ema'):
    print(name, 'sens95 thresholds per run', [round(float(thr(y, p['external'])), 3) for _, _, p in runs[name]], 'flip AUC', [round(roc_auc_score(y, p['external_flip']),4) for _,_,p in runs[name]])
