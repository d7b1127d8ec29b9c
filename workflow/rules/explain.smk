rule explain:
    """Attention heatmaps over fold 0's test faces and t-SNE of the model's representations.

    Its test faces are built as the evaluate rule builds them (AU maps from landmarks).
    """
    input:
        unpack(evaluate_extras),
        faces=tested_faces_array,
        folds=path(paths.FOLDS),
        model=path(paths.MODEL, fold=paths.EXPLAINED_FOLD),
    output:
        attention=report(
            path(paths.EXPLAIN_ATTENTION),
            caption="../report/attention.rst",
            category="Explanations",
            subcategory="{dataset} {protocol} {model}",
        ),
        tsne=report(
            path(paths.EXPLAIN_TSNE),
            caption="../report/tsne.rst",
            category="Explanations",
            subcategory="{dataset} {protocol} {model}",
        ),
        info=path(paths.EXPLAIN_INFO),
    log:
        log_path("explain", "{dataset}/{protocol}/{model}"),
    benchmark:
        benchmark_path("explain", "{dataset}/{protocol}/{model}")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        fold=paths.EXPLAINED_FOLD,
    script:
        "../scripts/explain.py"
