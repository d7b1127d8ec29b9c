rule folds:
    """Subject-independent stratified folds with a validation split carved by subject."""
    input:
        table=path(paths.FACES_TABLE),
    output:
        path(paths.FOLDS),
    log:
        log_path("folds", "{dataset}/{protocol}"),
    benchmark:
        benchmark_path("folds", "{dataset}/{protocol}")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        protocol=lambda wildcards: config["protocols"][wildcards.protocol],
        seed=config["seed"],
    script:
        "../scripts/folds.py"
