from bertforge.cli.create_pretraining_data import main

main()
