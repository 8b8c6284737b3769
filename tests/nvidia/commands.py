"""NVIDIA's command lines, as data, for tests/integration/test_nvidia_commands.py.

README: every command line of NVIDIA's README.md at HEAD (``head``) and at 7a4c4250
(``2020``), with its line number, placeholders (``<...>``) filled with a file of the test
workspace. Left out, and why: ``git clone``/``cd`` (not ours), the ``mode=${11:-"eval"}``
snippets (edits to the script, not commands) and the ``bash run_pretraining.sh
<training_batch_size> ...`` / ``bash scripts/run_squad.sh <checkpoint_to_load> <epochs> ...``
usage synopses (placeholders only; their filled-in examples are here).

SCRIPT_INVOCATIONS: how NVIDIA's scripts call the entry points, flag for flag, with the
scripts' default values: run_pretraining.sh phases 1 and 2, run_squad.sh's modes,
run_glue.sh, run.sub's phases and bertPrep.py's create_pretraining_data.py call.

Each entry: (generation, where, command, texts the output must contain). The test maps
/workspace/bert to its workspace, /results to a temporary folder, sets DRY_RUN=1 for the
shell scripts and PATH so that `python`/`python3` are this environment's. The phase-2
`sbatch run.sub` lines get INIT_CHECKPOINT (phase 1's checkpoint, which a real phase-2 job
finds through --dependency on the phase-1 job).
"""

from __future__ import annotations

P = "$BERT_PREP_WORKING_DIR"
SQUAD = f"{P}/download/squad/v1.1"
VOCAB = f"{P}/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"
OK = "flags and inputs OK"
# The data script's runs write into their own BERT_PREP_WORKING_DIR (a dataset is never
# overwritten without being asked), with Google's vocab and the real dump served as file://.
NVIDIA_DATA = ("WIKI_DUMP_URL=$WIKI_DUMP_URL NUM_TEXT_SHARDS=2 NUM_SHARDS=2 DUPE_FACTOR=1 "
               "DOWNLOAD_FINETUNING=0 VOCAB_FILE=" + VOCAB + " BERT_PREP_WORKING_DIR=/results/prep_$RANDOM ")

README = [
    # -- current generation (HEAD)
    ("head", "259", "bash scripts/docker/build.sh", ["docker build"]),
    ("head", "264", "bash scripts/docker/launch.sh", ["docker run"]),
    ("head", "282", NVIDIA_DATA + "/workspace/bert/data/create_datasets_from_start.sh",
     ["phase 1 HDF5", "done:"]),
    ("head", "294", "bash scripts/run_pretraining.sh",
     ["no arguments: running its defaults", OK]),
    ("head", "305", "bash scripts/run_squad.sh /workspace/bert/checkpoints/pre-trained_checkpoint.pt", [OK]),
    ("head", "312", "bash scripts/run_glue.sh /workspace/bert/checkpoints/pre-trained_checkpoint.pt", [OK]),
    ("head", "348", "bash scripts/run_squad.sh $(source scripts/configs/squad_config.sh && "
                    "dgxa100-80g_8gpu_fp16)", [OK]),
    ("head", "349", "bash scripts/run_glue.sh $(source scripts/configs/glue_config.sh && "
                    "mrpc_dgxa100-80g_8gpu_fp16)", [OK]),
    ("head", "350", "bash scripts/run_glue.sh $(source scripts/configs/glue_config.sh && "
                    "sst-2_dgxa100-80g_8gpu_fp16)", [OK]),
    ("head", "351", "bash scripts/run_pretraining.sh $(source scripts/configs/pretrain_config.sh && "
                    "dgxa100-80g_8gpu_fp16)", [OK, "phase 2"]),
    ("head", "507", "BATCHSIZE=2048 LR=6e-3 GRADIENT_STEPS=128 PHASE=1 sbatch -N4 --ntasks-per-node=8 run.sub",
     ["--train_batch_size=2048", "--learning_rate=6e-3", "--gradient_accumulation_steps=128"]),
    ("head", "508", "INIT_CHECKPOINT=/workspace/bert/checkpoints/bert_uncased.pt BATCHSIZE=1024 LR=4e-3 GRADIENT_STEPS=256 PHASE=2 sbatch -N4 --ntasks-per-node=8 run.sub",
     ["--train_batch_size=1024", "--learning_rate=4e-3", "--phase2"]),
    ("head", "525", "python run_pretraining.py --help", ["--steps_this_run"]),
    ("head", "527", "python run_squad.py --help", ["--eval_script"]),
    ("head", "529", "python run_glue.py --help", ["--server_ip"]),
    ("head", "628", "bash scripts/run_pretraining.sh", [OK]),
    ("head", "686", "bash scripts/run_squad.sh /workspace/bert/checkpoints/fine_tuned_checkpoint.pt", [OK]),
    ("head", "687", "bash scripts/run_glue.sh /workspace/bert/checkpoints/fine_tuned_checkpoint.pt", [OK]),
    ("head", "691", 'python inference.py --bert_model "bert-large-uncased" '
                    "--init_checkpoint=/workspace/bert/checkpoints/fine_tuned_checkpoint.pt "
                    f'--config_file="bert_config.json" --vocab_file={VOCAB}  '
                    '--question="What food does Harry like?" '
                    '--context="My name is Harry and I grew up in Canada. I love apples." --dry_run', [OK]),
    # The README's vocab path /workspace/bert/scripts/vocab/vocab does not exist in NVIDIA's
    # tree either (it is vocab/vocab); that one path is corrected.
    ("head", "712", "bash scripts/run_squad.sh /workspace/bert/bert_large_uncased.pt 2.0 4 3e-5 fp16 8 42 "
                    "/workspace/bert/squad_data /workspace/bert/vocab/vocab /results/SQuAD train "
                    "/workspace/bert/bert_config.json -1", [OK, "--warmup_proportion=0.1"]),
    ("head", "724", "bash scripts/run_squad.sh /workspace/bert/bert_large_uncased.pt 2.0 4 3e-5 fp16 8 42 "
                    "/workspace/bert/squad_data /workspace/bert/vocab/vocab /results/SQuAD eval "
                    "/workspace/bert/bert_config.json -1", [OK, "--do_eval"]),
    # -- 2020 generation (7a4c4250)
    ("2020", "251", "bash scripts/docker/build.sh", ["docker build"]),
    ("2020", "254", "bash scripts/docker/launch.sh", ["docker run"]),
    ("2020", "275", NVIDIA_DATA + "SKIP_PHASE2=1 /workspace/bert/data/create_datasets_from_start.sh",
     ["phase 1 HDF5"]),
    ("2020", "281", NVIDIA_DATA + "SKIP_PHASE2=1 /workspace/bert/data/create_datasets_from_start.sh wiki_only",
     ["phase 1 HDF5"]),
    ("2020", "286", NVIDIA_DATA + "SKIP_PHASE2=1 /workspace/bert/data/create_datasets_from_start.sh wiki_books",
     ["wiki_books: BookCorpus cannot be downloaded", "phase 1 HDF5"]),
    ("2020", "289", "bash scripts/run_pretraining.sh", [OK]),
    ("2020", "298", "bash scripts/run_squad.sh /workspace/checkpoints/bert_uncased.pt", [OK]),
    ("2020", "303", "bash scripts/run_glue.sh /workspace/bert/checkpoints/bert_uncased.pt", [OK]),
    ("2020", "334", "bash scripts/run_squad.sh $(source scripts/configs/squad_config.sh && dgxa100_8gpu_fp16)",
     [OK, "--learning_rate=3e-5"]),
    ("2020", "335", "bash scripts/run_glue.sh $(source scripts/configs/glue_config.sh && "
                    "mrpc_dgxa100_8gpu_fp16)", [OK]),
    ("2020", "336", "bash scripts/run_glue.sh $(source scripts/configs/glue_config.sh && "
                    "sst-2_dgxa100_8gpu_fp16)", [OK]),
    ("2020", "337", "bash scripts/run_pretraining.sh $(source scripts/configs/pretrain_config.sh && "
                    "dgxa100_8gpu_fp16)", [OK, "--gradient_accumulation_steps=128"]),
    ("2020", "495", "BATCHSIZE=2048 LR=6e-3 GRADIENT_STEPS=128 PHASE=1 sbatch -N4 --ntasks-per-node=8 run.sub",
     ["--train_batch_size=2048"]),
    ("2020", "496", "INIT_CHECKPOINT=/workspace/bert/checkpoints/bert_uncased.pt BATCHSIZE=1024 LR=4e-3 GRADIENT_STEPS=256 PHASE=2 sbatch -N4 --ntasks-per-node=8 run.sub",
     ["--train_batch_size=1024"]),
    ("2020", "646", "python run_pretraining.py --help", ["--bert_model"]),
    ("2020", "648", "python run_squad.py --help", ["--verbose_logging"]),
    ("2020", "650", "python run_glue.py --help", ["--loss_scale"]),
    ("2020", "758", "bash scripts/run_pretraining.sh", [OK]),
    ("2020", "816", "bash scripts/run_squad.sh /workspace/bert/checkpoints/fine_tuned_checkpoint.pt", [OK]),
    ("2020", "817", "bash scripts/run_glue.sh /workspace/bert/checkpoints/fine_tuned_checkpoint.pt", [OK]),
    ("2020", "821", 'python inference.py --bert_model "bert-large-uncased" '
                    "--init_checkpoint=/workspace/bert/checkpoints/fine_tuned_checkpoint.pt "
                    f'--config_file="bert_config.json" --vocab_file={VOCAB}  '
                    '--question="What food does Harry like?" '
                    '--context="My name is Harry and I grew up in Canada. I love apples." --dry_run', [OK]),
    ("2020", "842", "bash scripts/run_squad.sh /workspace/bert/bert_large_uncased_wiki+books.pt.model 2.0 4 "
                    "3e-5 fp16 8 42 /workspace/bert/squad_data /workspace/bert/vocab/vocab /results/SQuAD "
                    "train /workspace/bert/bert_config.json -1", [OK]),
    ("2020", "854", "bash scripts/run_squad.sh /workspace/bert/bert_large_uncased_wiki+books.pt.model 2.0 4 "
                    "3e-5 fp16 8 42 /workspace/bert/squad_data /workspace/bert/vocab/vocab /results/SQuAD "
                    "eval /workspace/bert/bert_config.json -1", [OK]),
]

_PRE1 = (f"--input_dir={P}/phase1_hdf5 --output_dir=/results/checkpoints --config_file=bert_configs/large.json "
         "--train_batch_size=8192 --max_seq_length=128 --max_predictions_per_seq=20 --max_steps=7038 "
         "--warmup_proportion=0.2843 --num_steps_per_checkpoint=200 --learning_rate=6e-3 --seed=12439 "
         "--fp16 --gradient_accumulation_steps=128 --allreduce_post_accumulation "
         "--allreduce_post_accumulation_fp16 --do_train --json-summary /results/dllogger.json")
_PRE2 = (f"--input_dir={P}/phase2_parquet --output_dir=/results/checkpoints2 --config_file=bert_configs/large.json "
         "--train_batch_size=4096 --max_seq_length=512 --max_predictions_per_seq=80 --max_steps=1563 "
         "--warmup_proportion=0.128 --num_steps_per_checkpoint=200 --learning_rate=4e-3 --seed=12439 "
         "--fp16 --gradient_accumulation_steps=512 --allreduce_post_accumulation "
         "--allreduce_post_accumulation_fp16 --do_train --phase2 --resume_from_checkpoint "
         "--phase1_end_step=7038 --json-summary /results/dllogger.json")
_LAUNCH = "python3 -m torch.distributed.launch --nproc_per_node=1 /workspace/bert/run_pretraining.py "
_SQUAD = ("--do_lower_case --bert_model=bert-large-uncased --learning_rate=3e-5 --seed=1 "
          "--num_train_epochs=2.0 --max_seq_length=384 --doc_stride=128 --output_dir=/results/SQuAD "
          f"--vocab_file={VOCAB} --config_file=/workspace/bert/bert_configs/large.json --max_steps=-1 --fp16")
_SQUAD_TRAIN = f"--do_train --train_file={SQUAD}/train-v1.1.json --train_batch_size=4"
_SQUAD_EVAL = (f"--do_predict --predict_file={SQUAD}/dev-v1.1.json --predict_batch_size=4 "
               f"--eval_script={SQUAD}/evaluate-v1.1.py --do_eval")
_GLUE = ("--gradient_accumulation_steps=1 --do_lower_case "
         f"--data_dir {P}/download/glue/MRPC/ --bert_model bert-large-uncased --seed 2 "
         "--init_checkpoint /workspace/bert/checkpoints/bert_uncased.pt --warmup_proportion 0.1 "
         "--max_seq_length 128 --learning_rate 2.4e-5 --num_train_epochs 3 --max_steps -1.0 "
         f"--vocab_file={VOCAB} --config_file=/workspace/bert/bert_configs/large.json "
         "--output_dir /results/MRPC --fp16")
_CKPT = "--init_checkpoint=/workspace/bert/checkpoints/bert_uncased.pt "

SCRIPT_INVOCATIONS = [
    # run_pretraining.sh (current): phase 1 (plain, resumed, from an init checkpoint), phase 2
    ("head", "run_pretraining.sh phase 1", _LAUNCH + _PRE1 + " --vocab_file=vocab/vocab "
     "--disable_progress_bar --num_workers=4 --dry_run", [OK]),
    ("head", "run_pretraining.sh phase 1 resume", _LAUNCH + _PRE1 + " --vocab_file=vocab/vocab "
     "--resume_from_checkpoint --disable_progress_bar --num_workers=4 --dry_run", [OK]),
    ("head", "run_pretraining.sh phase 1 init", _LAUNCH + _PRE1 + " --vocab_file=vocab/vocab "
     "--init_checkpoint=/workspace/bert/checkpoints/bert_uncased.pt --disable_progress_bar "
     "--num_workers=4 --dry_run", [OK]),
    ("head", "run_pretraining.sh phase 2", _LAUNCH + _PRE2 + " --vocab_file=vocab/vocab "
     "--disable_progress_bar --num_workers=4 --dry_run", [OK, "phase 2"]),
    # run_pretraining.sh (2020)
    ("2020", "run_pretraining.sh phase 1", _LAUNCH + _PRE1 + " --bert_model=bert-large-uncased --dry_run",
     [OK, "note: --bert_model has no effect"]),
    ("2020", "run_pretraining.sh phase 2", _LAUNCH + _PRE2 + " --bert_model=bert-large-uncased --dry_run",
     [OK]),
    # run_squad.sh (both generations; the current one adds --warmup_proportion)
    ("head", "run_squad.sh train", f"python run_squad.py {_CKPT}{_SQUAD_TRAIN} {_SQUAD} "
     "--warmup_proportion=0.1 --dry_run", [OK]),
    ("head", "run_squad.sh eval", f"python run_squad.py {_CKPT}{_SQUAD_EVAL} {_SQUAD} "
     "--warmup_proportion=0.1 --dry_run", [OK]),
    ("head", "run_squad.sh prediction", f"python run_squad.py {_CKPT}--do_predict "
     f"--predict_file={SQUAD}/dev-v1.1.json --predict_batch_size=4 {_SQUAD} --warmup_proportion=0.1 --dry_run",
     [OK]),
    ("head", "run_squad.sh train eval", f"python -m torch.distributed.launch --nproc_per_node=1 run_squad.py "
     f"{_CKPT} {_SQUAD_TRAIN} {_SQUAD_EVAL} {_SQUAD} --warmup_proportion=0.1 --dry_run", [OK]),
    ("2020", "run_squad.sh train eval", f"python run_squad.py {_CKPT} {_SQUAD_TRAIN} {_SQUAD_EVAL} {_SQUAD} "
     "--dry_run", [OK]),
    # run_glue.sh (both generations)
    ("head", "run_glue.sh train eval", f"python run_glue.py --task_name mrpc --do_train --train_batch_size=16 "
     f"--do_eval --eval_batch_size=16 {_GLUE} --dry_run", [OK]),
    ("head", "run_glue.sh prediction", f"python run_glue.py --task_name sst-2 --do_predict "
     f"--eval_batch_size=16 {_GLUE} --dry_run", [OK]),
    # run.sub (current): phases 1 and 2 inside the container
    ("head", "run.sub phase 1", "python -u /workspace/bert/run_pretraining.py --seed=42 --train_batch_size=8192 "
     "--learning_rate=6e-3 --warmup_proportion=0.2843 --max_seq_length=128 --max_predictions_per_seq=20 "
     "--max_steps=7038 --num_steps_per_checkpoint=2500 --do_train "
     f"--config_file=/workspace/bert/bert_configs/large.json --input_dir={P}/phase2_parquet "
     "--vocab_file=/workspace/bert/vocab/vocab --output_dir=/results/sub1 --fp16 "
     "--allreduce_post_accumulation_fp16 --allreduce_post_accumulation --gradient_accumulation_steps=32 "
     "--log_freq=1 --json-summary=/results/sub1/summary.json --disable_progress_bar --num_workers=4 "
     "--steps_this_run=100 --dry_run", [OK]),
    ("head", "run.sub phase 2", "python -u /workspace/bert/run_pretraining.py --seed=42 --train_batch_size=8192 "
     "--learning_rate=4e-3 --warmup_proportion=0.128 --phase2 --max_seq_length=512 "
     "--max_predictions_per_seq=80 --max_steps=1563 --num_steps_per_checkpoint=1000 "
     "--resume_from_checkpoint --phase1_end_step=7038 "
     "--init_checkpoint=/workspace/bert/checkpoints/bert_uncased.pt --do_train "
     f"--config_file=/workspace/bert/bert_configs/large.json --input_dir={P}/phase2_parquet "
     "--vocab_file=/workspace/bert/vocab/vocab --output_dir=/results/sub2 --allreduce_post_accumulation "
     "--gradient_accumulation_steps=32 --log_freq=1 --json-summary=/results/sub2/summary.json "
     "--disable_progress_bar --num_workers=4 --dry_run", [OK]),
    # run.sub (2020): the legacy --local_rank from SLURM_LOCALID
    ("2020", "run.sub phase 1", "SLURM_LOCALID=0 sh -c 'python -u /workspace/bert/run_pretraining.py --seed=42 "
     "--train_batch_size=16 --learning_rate=6e-3 --warmup_proportion=0.2843 "
     f"--input_dir={P}/phase1_hdf5 --max_seq_length=128 --max_predictions_per_seq=20 --max_steps=7038 "
     "--num_steps_per_checkpoint=2500 --do_train --config_file=/workspace/bert/bert_config.json "
     "--output_dir=/results/sub3 --fp16 --allreduce_post_accumulation --allreduce_post_accumulation_fp16 "
     "--gradient_accumulation_steps=2 --log_freq=1 --local_rank=${SLURM_LOCALID} --dry_run'", [OK]),
    # bertPrep.py --action create_hdf5_files (2020 data script): one text shard -> one .hdf5 file
    ("2020", "bertPrep.py create_hdf5_files", "mkdir -p /results/hdf5 && python /workspace/bert/create_pretraining_data.py "
     "--input_file=$TEXT/wiki_0.txt --output_file=/results/hdf5/wikicorpus_en_training_0.hdf5 "
     f"--vocab_file={VOCAB} --do_lower_case --max_seq_length=128 --max_predictions_per_seq=20 "
     "--masked_lm_prob=0.15 --random_seed=12345 --dupe_factor=5 && test -f /results/hdf5/wikicorpus_en_training_0.hdf5",
     ["instances"]),
]
