"""What a run reports beyond accuracy: Subspace Alignment (the paper's baseline),
the proxy A-distance (Ganin et al., JMLR 2016), t-SNE of the features (the paper's
Figure 4) and training curves."""

import numpy as np
import torch

SA_COMPONENTS = (2, 5, 10, 15, 20, 30, 40, 50, 60)  # the paper searched d in {2..60}


@torch.no_grad()
def embed_all(method, x, domain, batch=512):
    """``method.embed`` of all of ``x`` (images of ``domain``: a name, or each row's source
    id, data.source_rows) in eval mode, as numpy."""
    from .evaluate import rows_of

    was_training = [n.training for n in method.networks().values()]
    method.train(False)
    out = torch.cat([method.embed(x[i:i + batch], rows_of(domain, i, batch)).float().cpu()
                     for i in range(0, len(x), batch)])
    for net, mode in zip(method.networks().values(), was_training):
        net.train(mode)
    return out.numpy()


def _pca_basis(x, d):
    # principal directions of centred data, (D, d)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    return vt[:d].T


def subspace_alignment(method, data):
    """SA (Fernando et al., 2013) on the last hidden layer: z-score each domain,
    PCA bases Xs, Xt of d dims, align the source basis with M = Xs^T Xt, train a
    linear classifier on source projected by Xs M, test on target projected by Xt.
    d is chosen from SA_COMPONENTS by accuracy on held-out *source* data (no target
    labels are used)."""
    from sklearn.linear_model import LogisticRegression

    from .data import source_rows

    fs = embed_all(method, data["source_train"][0], source_rows(data, "source_train"))
    fs_test = embed_all(method, data["source_test"][0], source_rows(data, "source_test"))
    ft = embed_all(method, data["target_train"][0], "target")
    ft_test = embed_all(method, data["target_test"][0], "target")
    ys = data["source_train"][1].cpu().numpy()
    ys_test = data["source_test"][1].cpu().numpy()
    yt_test = data["target_test"][1].cpu().numpy()

    def zscore(x, ref):
        return (x - ref.mean(0)) / (ref.std(0) + 1e-6)

    fs_test, fs = zscore(fs_test, fs), zscore(fs, fs)
    ft_test, ft = zscore(ft_test, ft), zscore(ft, ft)
    best = None
    for d in SA_COMPONENTS:
        if d > min(fs.shape[1], len(fs), len(ft)):
            break
        xs, xt = _pca_basis(fs, d), _pca_basis(ft, d)
        aligned = xs @ (xs.T @ xt)
        clf = LogisticRegression(max_iter=500).fit(fs @ aligned, ys)
        source_acc = clf.score(fs_test @ aligned, ys_test)
        if best is None or source_acc > best["source_test_acc"]:
            best = {"components": d, "source_test_acc": float(source_acc),
                    "target_test_acc": float(clf.score(ft_test @ xt, yt_test))}
    return best


def proxy_a_distance(features_source, features_target, seed=0):
    """d_A = 2 (1 - 2 eps), eps the test error of a linear classifier telling source
    from target features, trained on one half of each and tested on the other."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    n = min(len(features_source), len(features_target))
    s = features_source[rng.permutation(len(features_source))[:n]]
    t = features_target[rng.permutation(len(features_target))[:n]]
    x = np.concatenate([s, t])
    y = np.concatenate([np.zeros(n), np.ones(n)])
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    order = rng.permutation(2 * n)
    train, test = order[: n], order[n:]
    if len(np.unique(y[train])) < 2:  # test sets of one or two rows: no classifier to fit
        return float("nan")
    clf = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    eps = 1.0 - clf.score(x[test], y[test])
    return float(2.0 * (1.0 - 2.0 * eps))


def plot_tsne(panels, path, n=500, seed=0):
    """panels: [(title, source features, target features)] -> one PNG with a t-SNE
    scatter per panel (blue source, red target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, (title, fs, ft) in zip(axes[0], panels):
        fs = fs[rng.permutation(len(fs))[:n]]
        ft = ft[rng.permutation(len(ft))[:n]]
        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=30).fit_transform(
            np.concatenate([fs, ft]).astype(np.float32))
        ax.scatter(*xy[: len(fs)].T, s=4, c="tab:blue", label="source")
        ax.scatter(*xy[len(fs):].T, s=4, c="tab:red", label="target")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(records, path, title=""):
    """Training curves from metrics.jsonl records: losses, domain accuracy, lambda,
    evaluation accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (title, keys, record kinds, line style) of each panel
    panels = (("losses", ("label_loss", "domain_loss", "discrepancy", "gradient_discrepancy", "mcc_loss",
                          "target_cond_entropy", "vat_source", "vat_target", "teacher_kl"), ("train",), {}),
              ("domain accuracy, lambda, target entropies / log K",
               ("domain_acc", "lambda", "pseudo_label_acc", "target_entropy", "target_marginal_entropy"),
               ("train", "refresh"), {}),
              ("test accuracy", ("source_test_acc", "target_test_acc"), ("eval",), {"marker": "o"}))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for ax, (panel_title, keys, kinds, style) in zip(axes, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if r.get("kind") in kinds and key in r]
            if pts:
                ax.plot(*zip(*pts), label=key, **style)
        ax.set_xlabel("step")
        ax.set_title(panel_title)
        if ax.lines:
            ax.legend()
    axes[2].set_ylim(0, 1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
