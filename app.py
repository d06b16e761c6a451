"""TT-LoRA MoE Studio — navigation only (pages live in pages/)."""

import streamlit as st

st.set_page_config(page_title="TT-LoRA MoE Studio", page_icon="🧩", layout="wide")
st.title("TT-LoRA MoE Studio")
st.write("The engine (`ttmoe_core`) is ready from the command line; the pages are coming: "
         "budget calculator, expert training, router, playground.")
st.code("python -m ttmoe_core budget --model llama-3.2-1b --method tt-lora --rank 5 "
        "--targets q_proj,v_proj --shape q_proj=16,8,4,4,4,4,8,16 --shape v_proj=16,16,4,2,2,16,16")
