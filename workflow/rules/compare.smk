rule compare:
    """Intervals, calibration and paired tests of the models of one (dataset, protocol);
    the numbers also go to each model's parent MLflow run."""
    input:
        summaries=compared_summaries,
        predictions=compared_predictions,
        folds=path(paths.FOLDS),
    output:
        path(paths.STATISTICS),
    log:
        log_path("compare", "{dataset}/{protocol}"),
    benchmark:
        benchmark_path("compare", "{dataset}/{protocol}")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        folds=lambda wildcards: len(fold_numbers(wildcards.protocol)),
    script:
        "../scripts/compare.py"
