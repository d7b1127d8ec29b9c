rule dcgan:
    """DE-Capsnet's DCGAN augmentation: one DCGAN per class of a fold's training faces only."""
    input:
        faces=path(paths.FACES_ARRAY),
        folds=path(paths.FOLDS),
    output:
        array=path(paths.DCGAN_ARRAY),
        table=path(paths.DCGAN_TABLE),
        samples=report(
            path(paths.DCGAN_SAMPLES),
            caption="../report/dcgan_samples.rst",
            category="DCGAN faces",
            subcategory="{dataset} {protocol}",
        ),
    log:
        log_path("dcgan", "{dataset}/{protocol}/fold{fold}"),
    benchmark:
        benchmark_path("dcgan", "{dataset}/{protocol}/fold{fold}")
    conda:
        "../envs/ferbench.yaml"
    threads: config["train_threads"]
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=config["train_gpus"],
    params:
        options=config["dcgan"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/dcgan.py"
