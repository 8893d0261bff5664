"""Training and evaluation, one module per job:

- cli: the scripts' entries (train_main, test_main, train_cli, test_cli: exit codes, Ctrl-C);
- training: a training run (set-up, the epochs, evaluation every --eval-every epochs);
- loop: train_one_epoch and predict (pair_meters: a stage-2 model's pair probabilities);
- recipe: the model a run starts from, AdamW, the cosine learning rate, the epoch seed;
- data: the explicit SYNTH generation (prepare_synth), datasets and loaders;
- checkpoints: the facts a checkpoint carries, the training state, the files of a run;
- evaluation: testing checkpoints (results.json / .csv, figures);
- run_folder: the run folder's lock and the no-overwrite rule;
- logs: log set-up and progress lines; losses and metrics.
"""
