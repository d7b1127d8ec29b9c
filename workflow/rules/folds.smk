rule folds:
    """The protocol's split table (train / val / test per fold), leak-checked before writing;
    with `dedupe: drop`, near-duplicate test faces are set aside (role duplicate)."""
    input:
        unpack(dedupe_arrays),
        table=path(paths.FACES_TABLE),
        test_table=cross_dataset_faces_table,
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
