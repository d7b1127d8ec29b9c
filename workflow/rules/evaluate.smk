rule evaluate:
    """Test-set metrics and predictions of one fold (summarize logs them to MLflow)."""
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
    """Mean and std over folds; closes the fold MLflow runs with their test metrics and
    files, under one parent run."""
    input:
        metrics=lambda wildcards: each_fold(paths.METRICS, wildcards),
        predictions=lambda wildcards: each_fold(paths.PREDICTIONS, wildcards),
        histories=lambda wildcards: each_fold(paths.HISTORY, wildcards),
        models=lambda wildcards: each_fold(paths.MODEL, wildcards),
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
