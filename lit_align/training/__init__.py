"""What the algorithms of the zoo are built on: the LightningModule bases and the parts only training uses.

    base.py       AlignmentModule: the shared options, the parts a module holds, optimizer and schedule, clipping,
                  non-finite losses, FSDP2 sharding, cross-rank reductions, metric groups, hyperparameter logging
    offline.py    OfflineModule: the compute_loss loop of the offline algorithms (automatic optimization)
    online.py     OnlinePolicyGradient: rollout -> rewards -> advantages -> updates, written out, with its hooks
    objective.py  ObjectiveOptions (the ``objective`` group) and the Objective part (the per-token surrogate);
                  the rollout engine's importance correction
    critic.py     PPO's value model: its initializations and per-token values
    self_play.py  SPIN's opponent: answering the prompts and scoring the pairs, spread over ranks
    teachers.py   distillation's teachers: frozen models by name, their vocabulary checked, each row's teacher
"""
