rule mediapipe_detect:
    """BlazeFace over every image, in MediaPipe's own environment (it needs numpy<2)."""
    input:
        raw=raw_input,
        manifest=path(paths.MANIFEST),
    output:
        path(paths.MEDIAPIPE_DETECTIONS),
    log:
        log_path("mediapipe_detect", "{dataset}"),
    benchmark:
        benchmark_path("mediapipe_detect", "{dataset}")
    conda:
        "../envs/mediapipe.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        python=mediapipe_python,
        worker=mediapipe_client.WORKER,
        root=dataset_root,
    shell:
        "{params.python:q} {params.worker:q} detect-manifest {input.manifest:q} "
        "{params.root:q} {output:q} 2> {log:q}"


rule faces:
    """Detect, crop, resize and normalise every face; record each image's outcome."""
    input:
        raw=raw_input,
        manifest=path(paths.MANIFEST),
        detections=mediapipe_detections,
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
