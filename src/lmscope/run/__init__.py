"""Run folders and checkpoints: the file formats every other part reads.

    checkpoint   one checkpoint folder: save, check (sha256), load; finding a run's checkpoints
    run_dir      RunDir, the typed reader of a run folder (config, metrics, summary, samples)
    lock         FolderLock: one writer per run or study folder
    out_dir      OutDir: the one policy of every command that writes an --out folder
"""
