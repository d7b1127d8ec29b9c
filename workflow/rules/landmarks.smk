rule landmarks:
    """68 landmarks per face crop (the dataset's own, else MediaPipe's face mesh) and a sheet."""
    input:
        raw=raw_input,
        table=path(paths.FACES_TABLE),
        array=path(paths.FACES_ARRAY),
    output:
        array=path(paths.LANDMARKS_ARRAY),
        samples=report(
            path(paths.LANDMARKS_SAMPLES),
            caption="../report/landmarks_samples.rst",
            category="Faces",
            subcategory="{dataset}",
        ),
    log:
        log_path("landmarks", "{dataset}"),
    benchmark:
        benchmark_path("landmarks", "{dataset}")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        dataset=dataset_config,
    script:
        "../scripts/landmarks.py"
