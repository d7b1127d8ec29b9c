rule augment:
    """Offline augmentation of the training part of one fold (never validation or test)."""
    input:
        faces=path(paths.FACES_ARRAY),
        folds=path(paths.FOLDS),
    output:
        array=path(paths.AUGMENT_ARRAY),
        table=path(paths.AUGMENT_TABLE),
    log:
        log_path("augment", "{dataset}/{protocol}/fold{fold}"),
    benchmark:
        benchmark_path("augment", "{dataset}/{protocol}/fold{fold}")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        options=config["augment"],
        seed=config["seed"],
    script:
        "../scripts/augment.py"
