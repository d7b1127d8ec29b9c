rule faces:
    """Detect, crop, resize and normalise every face; record each image's outcome."""
    input:
        raw=raw_input,
        manifest=path(paths.MANIFEST),
    output:
        array=path(paths.FACES_ARRAY),
        table=path(paths.FACES_TABLE),
        samples=report(
            path(paths.FACES_SAMPLES),
            caption="../report/faces_samples.rst",
            category="Faces",
            subcategory="{dataset}",
        ),
        stats=path(paths.DETECTION),
    log:
        log_path("faces", "{dataset}"),
    benchmark:
        benchmark_path("faces", "{dataset}")
    conda:
        "../envs/ferbench.yaml"
    # Haar's search is split over the job's threads (processes); outputs do not depend on it
    threads: workflow.cores or 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        dataset=dataset_config,
    script:
        "../scripts/faces.py"
