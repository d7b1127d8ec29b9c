rule train:
    """Train one fold of one model; checkpoints every epoch and resumes after a kill.

    A model may start from another run's weights (train_extras): DAM-CNN's step 2 from the
    same fold's VGG-SERD, or a study's models from their pretraining stage."""
    input:
        unpack(train_extras),
        manifest=path(paths.MANIFEST),
        faces=path(paths.FACES_ARRAY),
        folds=path(paths.FOLDS),
        augment_array=path(paths.AUGMENT_ARRAY),
        augment_table=path(paths.AUGMENT_TABLE),
    output:
        model=path(paths.MODEL),
        history=path(paths.HISTORY),
        run=path(paths.RUN_INFO),
    log:
        log_path("train", "{dataset}/{protocol}/{model}/fold{fold}"),
    benchmark:
        benchmark_path("train", "{dataset}/{protocol}/{model}/fold{fold}")
    conda:
        "../envs/ferbench.yaml"
    threads: config["train_threads"]
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=config["train_gpus"],
    params:
        checkpoint=path(paths.CHECKPOINT),
        recipe=recipe,
    script:
        "../scripts/train.py"
