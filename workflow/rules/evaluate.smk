rule evaluate:
    """Test-set metrics of one fold; closes its MLflow run with metrics and artifacts."""
    input:
        unpack(evaluate_extras),
        faces=tested_faces_array,
        folds=path(paths.FOLDS),
        model=path(paths.MODEL),
        history=path(paths.HISTORY),
        run=path(paths.RUN_INFO),
    output:
        metrics=path(paths.METRICS),
        predictions=path(paths.PREDICTIONS),
    log:
        log_path("evaluate", "{dataset}/{protocol}/{model}/fold{fold}"),
    benchmark:
        benchmark_path("evaluate", "{dataset}/{protocol}/{model}/fold{fold}")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    script:
        "../scripts/evaluate.py"


rule summarize:
    """Mean and std over folds, and the parent MLflow run the fold runs nest under."""
    input:
        metrics=lambda wildcards: expand(
            path(paths.METRICS),
            fold=fold_numbers(wildcards.protocol),
            allow_missing=True,
        ),
        folds=path(paths.FOLDS),
    output:
        path(paths.SUMMARY),
    log:
        log_path("summarize", "{dataset}/{protocol}/{model}"),
    benchmark:
        benchmark_path("summarize", "{dataset}/{protocol}/{model}")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        protocol=lambda wildcards: config["protocols"][wildcards.protocol],
    script:
        "../scripts/summarize.py"
