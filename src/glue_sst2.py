"""Fine-tune on GLUE SST-2 with LoRA or AdaLoRA: python src/glue_sst2.py --help"""

from adarank.pipeline import main

if __name__ == "__main__":
    main("sst2")
