"""Fine-tune on GLUE QQP with LoRA or AdaLoRA: python src/glue-qqp.py --help"""

from adarank.pipeline import main

if __name__ == "__main__":
    main("qqp")
